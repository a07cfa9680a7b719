"""Phase two trusts nothing it has not checked: damaged rows stop every loader with one line, the
teacher resolves from any folder and must have the digest the store records, and bad input to either
command line is one line with exit status 2.

    .venv/bin/python -m pytest tests/test_trust_phase_two.py -q
"""

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch

from shared.errors import DistillCacheError
from shared.store import StoreReader, example_batches
from shared.store.reader import DamagedRowsError
from shared.teacher import (
    load_denoiser,
    load_teacher,
    resolve_teacher_source,
    teacher_origin,
)
from student_train.cli import main as student_main
from student_train.eval.sets import resolve_unseen_cache
from student_train.export import load_exported_student
from teacher_cache.cli import main as teacher_main
from teacher_cache.embedded import DEFAULT_TEACHER_DIR
from tests.store_fixtures import write_samples
from tests.student_store_fixture import one_torch_thread, shared_capture, write_capture_store  # noqa: F401

TRAIN = ["--method", "direct", "--train-steps", "1", "--batch-size", "2", "--num-student-steps", "1"]
TRAIN += ["--split", "all", "--lr", "1e-3"]


def last_error_line(capsys) -> str:
    error = capsys.readouterr().err.strip().splitlines()
    return error[-1] if error else ""


def damage(store: Path, field: str) -> None:
    """Flip one byte in the middle of a field's first shard."""
    path = next(path for path in (store / "groups").glob(f"*/{field}/c/**/*") if path.is_file())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def damaged_store(tmp_path_factory) -> str:
    store = tmp_path_factory.mktemp("damaged") / "store"
    write_capture_store(shared_capture(), store, fields=("noise", "final_latents"))
    damage(store, "final_latents")
    return str(store)


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_training_on_a_damaged_row_stops_with_one_line(damaged_store, loader, tmp_path, capsys):
    status = student_main(
        ["run", "--cache", damaged_store, "--out", str(tmp_path / "out"), *TRAIN, "--loader", loader]
    )
    error = last_error_line(capsys)
    assert status == 2 and error.startswith("student-train: error: ")
    assert "field 'final_latents'" in error and "teacher-cache verify" in error


def test_example_batches_stop_on_a_damaged_row():
    store = Path(os.environ.get("TMPDIR", "/tmp")) / f"eb-{os.getpid()}"
    shutil.rmtree(store, ignore_errors=True)
    write_samples(store, range(6), batch_size=6)
    damage(store, "trajectory")
    reader = StoreReader(store)
    with pytest.raises(DamagedRowsError):
        list(example_batches(reader, reader.indices(), batch_size=4, step_fields={"trajectory": (0,)}))
    shutil.rmtree(store)


def test_the_embedded_teacher_is_named_so_that_it_resolves_from_anywhere(tmp_path, monkeypatch):
    assert teacher_origin(str(DEFAULT_TEACHER_DIR), None) == {
        "source": "embedded:default_teacher",
        "revision": None,
    }
    monkeypatch.chdir(tmp_path)
    assert Path(resolve_teacher_source("embedded:default_teacher")) == DEFAULT_TEACHER_DIR
    (tmp_path / "mine").mkdir()
    assert teacher_origin("mine", "v1") == {"source": str(tmp_path / "mine"), "revision": "v1"}  # absolute
    assert teacher_origin("org/model", "main") == {"source": "org/model", "revision": "main"}  # a Hub id
    with pytest.raises(DistillCacheError, match="no embedded teacher 'nothing'"):
        resolve_teacher_source("embedded:nothing")


def test_the_denoiser_digest_does_not_depend_on_the_capture_dtype():
    folder = str(shared_capture().teacher_dir)
    digests = {
        dtype: load_teacher(folder, None, torch.device("cpu"), dtype).fingerprint["denoiser_hash"]
        for dtype in (torch.float32, torch.float16)
    }
    assert digests[torch.float16] == digests[torch.float32] == shared_capture().fingerprint["denoiser_hash"]


@pytest.fixture(scope="module")
def store_and_teachers(tmp_path_factory):
    """A store of the tiny teacher, a copy of that teacher elsewhere, and a teacher with other weights."""
    folder = tmp_path_factory.mktemp("teachers")
    capture = shared_capture()
    store = write_capture_store(capture, folder / "store", fields=("noise", "final_latents"))
    copy = shutil.copytree(capture.teacher_dir, folder / "copy")
    other = shutil.copytree(capture.teacher_dir, folder / "other")
    unet = load_denoiser(str(other))
    with torch.no_grad():
        next(unet.parameters()).add_(1e-3)
    unet.save_pretrained(other / "unet")
    return store, copy, other


def test_a_teacher_with_other_weights_is_refused_and_a_copy_is_checked_and_used(
    store_and_teachers, tmp_path, capsys
):
    store, copy, other = store_and_teachers
    status = student_main(
        ["run", "--cache", store, "--out", str(tmp_path / "a"), *TRAIN, "--teacher", str(other)]
    )
    error = last_error_line(capsys)
    assert status == 2 and "weights digest" in error and "it is another model" in error
    assert not (tmp_path / "a").exists()
    assert (
        student_main(["run", "--cache", store, "--out", str(tmp_path / "b"), *TRAIN, "--teacher", str(copy)])
        == 0
    )


def test_training_from_another_folder_on_a_store_of_the_embedded_teacher(tmp_path, monkeypatch):
    from teacher_cache.config import CaptureConfig
    from teacher_cache.runner import run

    store = tmp_path / "store"
    run(
        CaptureConfig(
            out=str(store),
            limit=2,
            steps=2,
            seeds_per_prompt=1,
            fields=("noise", "final_latents", "cond"),
            threads=1,
            progress=False,
        )
    )
    assert StoreReader(store).teacher == {"source": "embedded:default_teacher", "revision": None}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert student_main(["run", "--cache", str(store), "--out", "student", *TRAIN]) == 0
    assert (elsewhere / "student" / "distill.json").is_file()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--guidance", "nan"], "--guidance must be a finite number, not nan"),
        (["--val-fraction", "inf"], "--val-fraction must be a finite number"),
    ],
)
def test_capture_refuses_non_finite_numbers(tmp_path, capsys, flags, message):
    assert teacher_main(["run", "--out", str(tmp_path / "store"), *flags]) == 2
    assert message in last_error_line(capsys) and not (tmp_path / "store").exists()


def test_a_prompt_file_with_a_nan_guidance_is_one_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    with prompts.open("w", newline="") as handle:
        csv.writer(handle).writerows([["prompt", "guidance_scale"], ["a red one on blue", "nan"]])
    assert teacher_main(["run", "--out", str(tmp_path / "store"), "--prompts", str(prompts)]) == 2
    assert "guidance_scale nan is not a finite number" in last_error_line(capsys)


def test_an_out_that_is_a_file_or_read_only_is_refused_by_both_commands(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    store = write_capture_store(shared_capture(), tmp_path / "store", fields=("noise", "final_latents"))
    assert teacher_main(["run", "--out", str(a_file)]) == 2
    assert "is a file" in last_error_line(capsys)
    assert student_main(["run", "--cache", store, "--out", str(a_file), *TRAIN]) == 2
    assert "is a file" in last_error_line(capsys)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    access = os.access  # root may write anywhere: make the folder read-only as any other user sees it
    monkeypatch.setattr(
        os, "access", lambda path, mode: False if Path(path) == read_only else access(path, mode)
    )
    assert teacher_main(["run", "--out", str(read_only / "store")]) == 2
    assert "not a folder this user may write" in last_error_line(capsys)
    assert student_main(["run", "--cache", store, "--out", str(read_only / "student"), *TRAIN]) == 2
    assert "not a folder this user may write" in last_error_line(capsys)


def test_training_refuses_a_nan_learning_rate(store_and_teachers, tmp_path, capsys):
    store, _, _ = store_and_teachers
    assert student_main(["run", "--cache", store, "--out", str(tmp_path / "out"), *TRAIN, "--lr", "nan"]) == 2
    assert "--lr must be a finite number, not nan" in last_error_line(capsys)


def test_a_resumed_run_logs_each_step_once_and_a_damaged_student_is_named(store_and_teachers, tmp_path):
    store, _, _ = store_and_teachers
    out = tmp_path / "out"
    common = [
        "run",
        "--cache",
        store,
        "--out",
        str(out),
        *TRAIN,
        "--log-every",
        "1",
        "--checkpoint-every",
        "1",
    ]
    assert student_main([*common, "--train-steps", "3"]) == 0
    # as if killed after logging step 3 but before its checkpoint was complete: resume from step 2
    shutil.rmtree(out / "checkpoints" / "step_0000003")
    assert student_main([*common, "--train-steps", "3", "--resume"]) == 0
    with (out / "logs" / "train_log.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3]
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DistillCacheError, match="cannot load the student's denoiser"):
        load_exported_student(out)


def test_eval_finds_the_unseen_store_beside_a_remote_cache():
    url = f"memory://eval-{os.getpid()}/cache"
    write_samples(url + "_unseen", range(2))
    assert resolve_unseen_cache(url, "auto") == url + "_unseen"
