"""Phase two on several processes (`accelerate launch --multi_gpu --num_processes 2`, gloo on the CPU):
the global batch, however it is split, trains the same model; each process reads only its own rows;
a killed 2-process run resumes bit-identical; a resume on another number of processes continues the
same run at the same global batch and is refused at another.

The 2-process cases launch real processes (tens of seconds each): marked slow.
"""

import shutil
from pathlib import Path

import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

import student_train.training.loop as training_loop
from shared.errors import DistillCacheError
from shared.store import StoreReader
from student_train.data.batches import TrainingData
from student_train.data.randomness import SampleRandom
from student_train.losses import METHODS
from student_train.students import build_student
from student_train.students.denoiser import load_denoiser
from student_train.training.checkpoints import check_global_batch, checkpoint_dirs, resume_point
from student_train.training.data_order import DataOrder
from tests.student_store_fixture import (  # noqa: F401 (autouse)
    method_settings,
    one_torch_thread,
    shared_capture,
    tiny_train_config,
)
from tests.train_processes import launch_cli, launch_training

STUDENT_KINDS = ("full", "lora")


def permutation(num_rows: int, seed: int, epoch: int) -> list[int]:
    """The epoch's order of the split's rows, as docs/training.md defines it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_rows, generator=generator).tolist()


def update_samples(order: DataOrder, update: int) -> list[tuple[int, int]]:
    """(row, epoch) of every sample this process trains on in `update`."""
    samples = []
    for micro in range(order.grad_accum):
        positions = order.micro_batch_positions(update, micro)
        samples += zip(order.rows(positions).tolist(), order.epochs(positions))
    return samples


def test_every_split_of_a_global_batch_trains_on_the_same_samples():
    num_rows, seed, updates = 6, 5, 5
    layouts = {  # (batch_size, grad_accum, processes): global batch 4
        "one process": [DataOrder(num_rows, seed, 4, 1, 1, 0)],
        "accumulation": [DataOrder(num_rows, seed, 2, 2, 1, 0)],
        "two processes": [DataOrder(num_rows, seed, 2, 1, 2, rank) for rank in (0, 1)],
        "two x accumulation": [DataOrder(num_rows, seed, 1, 2, 2, rank) for rank in (0, 1)],
    }
    for update in range(updates):
        # by hand: positions 4k .. 4k + 3 of the stream, slot p % 6 of epoch p // 6
        expected = sorted(
            (permutation(num_rows, seed, p // num_rows)[p % num_rows], p // num_rows)
            for p in range(4 * update, 4 * update + 4)
        )
        for name, orders in layouts.items():
            per_process = [update_samples(order, update) for order in orders]
            assert sorted(sum(per_process, [])) == expected, (name, update)
            if len(per_process) == 2:  # disjoint shares: no sample is trained twice
                assert not set(per_process[0]) & set(per_process[1]), (name, update)


def test_per_sample_draws_depend_on_the_epoch_not_the_layout():
    together = SampleRandom(0, [3, 3, 4], ["a", "b", "c"]).uniform(0, 1)
    apart = [SampleRandom(0, [epoch], [sid]).uniform(0, 1) for epoch, sid in ((3, "a"), (3, "b"), (4, "c"))]
    assert torch.equal(together, torch.cat(apart))
    assert not torch.equal(SampleRandom(0, 3, ["a"]).uniform(0, 1), SampleRandom(0, 4, ["a"]).uniform(0, 1))


class RecordingReader:
    """A StoreReader that records the manifest rows each read asks for."""

    def __init__(self, reader):
        self.reader, self.rows_read = reader, set()

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def read(self, field, rows, steps=None):
        self.rows_read.update(int(r) for r in rows)
        return self.reader.read(field, rows, steps)

    def read_stored(self, field, rows, steps=None):
        self.rows_read.update(int(r) for r in rows)
        return self.reader.read_stored(field, rows, steps)


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_each_process_reads_only_its_own_rows(store, loader):
    shares = []
    for rank in (0, 1):
        reader = RecordingReader(StoreReader(store))
        order = DataOrder(6, 0, 3, 1, 2, rank)  # one update of global batch 6: the whole split
        data = TrainingData(reader, ("noise",), loader=loader, needed=order.rows_read(0, 1))
        for positions in order.schedule(0, 1):
            data.batch(order.rows(positions), "cpu")
        shares.append(reader.rows_read)
    assert len(shares[0]) == len(shares[1]) == 3
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(6))


def test_a_resume_at_another_global_batch_is_refused(store, tmp_path):
    training_loop.train(tiny_train_config(store, tmp_path / "run", train_steps=2, checkpoint_every=1))
    same_run = tiny_train_config(store, tmp_path / "run", train_steps=2, resume=True)
    folder = resume_point(same_run, tmp_path / "run")
    check_global_batch(folder, same_run, 1)  # 3 x 1 x 1, as saved
    check_global_batch(folder, tiny_train_config(store, "unused", batch_size=1, grad_accum=3), 1)
    with pytest.raises(DistillCacheError, match=r"global batch of 3 \(--batch-size 3 x --grad-accum 1 x 1 "):
        check_global_batch(folder, same_run, 2)  # 3 x 1 x 2 processes


# ---------------------------------------------------------------- launched processes (slow)


def exported(out: Path, student: str) -> dict[str, torch.Tensor]:
    name = (
        "pytorch_lora_weights.safetensors"
        if student == "lora"
        else "unet/diffusion_pytorch_model.safetensors"
    )
    return load_file(str(Path(out) / name))


def initial_weights(config, method: str) -> dict[str, torch.Tensor]:
    """The student's weights before training, under the names its export uses (the teacher of
    feature_store, whose capture also serves store's: both are the tiny teacher)."""
    student = build_student(
        config.student,
        load_denoiser(str(shared_capture(features=True).teacher_dir)),
        config,
        METHODS[method].w_conditioned,
    )
    if config.student == "lora":
        return {f"unet.{name}": value for name, value in get_peft_model_state_dict(student.model).items()}
    return student.model.state_dict()


def logged_losses(out) -> dict[int, float]:
    """{update: loss}; an update logged again after a resume keeps its last value."""
    lines = (Path(out) / "logs" / "train_log.csv").read_text().splitlines()[1:]
    return {int(line.split(",")[0]): float(line.split(",")[1]) for line in lines}


def assert_same_training(reference, other, method: str, tolerance: float = 5e-3) -> None:
    """Same losses at every update, and weights that differ by float rounding only: the distance
    between the two is under `tolerance` of how far training moved the reference's weights (a
    different batch, loss reduction or gradient average moves them by a large fraction of that)."""
    # rel 1e-3: blockkd's squared error of a student still close to its teacher is ~1e-5, where the
    # rounding of a 2-way gradient average shows at 1e-4; another batch would differ by O(1)
    assert logged_losses(other.out) == pytest.approx(logged_losses(reference.out), rel=1e-3)
    ours, theirs = exported(reference.out, reference.student), exported(other.out, other.student)
    start = initial_weights(reference, method)
    assert ours.keys() == theirs.keys() and ours.keys() <= start.keys()
    difference = torch.cat([(ours[k] - theirs[k]).flatten() for k in ours]).norm()
    moved = torch.cat([(ours[k] - start[k]).flatten() for k in ours]).norm()
    assert moved > 0 and difference <= tolerance * moved, (method, float(difference), float(moved))


@pytest.mark.slow
def test_two_processes_train_as_one_at_the_same_global_batch_every_method(feature_store, tmp_path):
    cases = [(method, kind) for method in METHODS for kind in STUDENT_KINDS]
    settings = dict(train_steps=3, lr=1e-3)
    two = [
        tiny_train_config(
            feature_store,
            tmp_path / f"two-{m}-{k}",
            method=m,
            student=k,
            batch_size=2,
            **method_settings(m, k),
            **settings,
        )
        for m, k in cases
    ]
    result = launch_training(two, num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    for (method, kind), launched in zip(cases, two):
        single = tiny_train_config(
            feature_store,
            tmp_path / f"one-{method}-{kind}",
            method=method,
            student=kind,
            batch_size=4,
            **method_settings(method, kind),
            **settings,
        )
        training_loop.train(single)
        assert_same_training(single, launched, method)


@pytest.mark.slow
def test_killed_two_process_run_resumes_bit_identical_and_on_one_process_at_the_same_global_batch(
    store, tmp_path
):
    settings = dict(method="lcm", student="full", train_steps=5, checkpoint_every=2, batch_size=2)
    whole = tiny_train_config(store, tmp_path / "whole", **settings)
    flags = ["run", "--cache", store, "--out", whole.out, "--method", "lcm", "--student", "full"]
    flags += ["--train-steps", "5", "--checkpoint-every", "2", "--batch-size", "2", "--lr", "1e-3"]
    flags += ["--lora-rank", "4", "--lora-alpha", "4", "--num-student-steps", "2"]
    flags += ["--w-min", "0.5", "--w-max", "2.0", "--log-every", "1"]
    result = launch_cli(flags)  # the real command line, uninterrupted
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 x 1 x 2 processes" in result.stdout

    killed = tiny_train_config(store, tmp_path / "killed", **settings)
    result = launch_training([killed], kill_after_step=3)  # SIGKILL after update 3; last checkpoint: 2
    assert result.returncode != 0
    assert [folder.name for folder in checkpoint_dirs(tmp_path / "killed")] == ["step_0000002"]
    shutil.copytree(tmp_path / "killed", tmp_path / "one_process")

    result = launch_training([tiny_train_config(store, tmp_path / "killed", resume=True, **settings)])
    assert result.returncode == 0, result.stderr[-3000:]
    whole_weights, resumed = exported(whole.out, "full"), exported(killed.out, "full")
    assert whole_weights.keys() == resumed.keys()
    assert all(torch.equal(whole_weights[name], resumed[name]) for name in whole_weights)

    # One process, same global batch (2 x grad_accum 2): the same run, to float rounding.
    on_one = dict(settings, grad_accum=2)
    training_loop.train(tiny_train_config(store, tmp_path / "one_process", resume=True, **on_one))
    assert_same_training(whole, tiny_train_config(store, tmp_path / "one_process", **on_one), "lcm")
    # One process at batch 2 x 1: another global batch, refused before anything is written.
    with pytest.raises(DistillCacheError, match="global batch of 4"):
        training_loop.train(tiny_train_config(store, tmp_path / "killed", resume=True, **settings))
