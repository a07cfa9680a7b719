"""Writers that share a store do not repeat work: each takes its jobs in its own order and skips, before
every batch, what any writer committed meanwhile; only batches in flight are computed twice.

    .venv/bin/python -m pytest tests/test_store_sharing.py -q            # the simulation
    .venv/bin/python -m pytest tests/test_store_sharing.py -q -m slow    # three real `teacher-cache run`s
"""

import re
import subprocess
from dataclasses import dataclass

import pytest

from shared.store import StoreReader, verify_store
from teacher_cache.job_queue import JobQueue, without_committed
from tests.capture_helpers import PYTHON, cli_args, subprocess_env, tiny_capture_config, write_prompts
from tests.test_store_processes import all_manifest_rows
from tests.tiny_models import save_tiny_sd_pipeline


@dataclass(frozen=True)
class Job:
    guidance_scale: float


@dataclass(frozen=True)
class Sample:
    sample_id: str
    job: Job


def simulate(
    writers: int, samples: int, batch_size: int, seeds: list, use_claims: bool = True
) -> tuple[int, int]:
    """Writers in lock step, as `teacher-cache run` works: each round every writer picks a batch from
    what is committed and not claimed by others, claims it (with the batch it is still committing),
    computes it, then drops what was committed meanwhile and hands the rest to its commit queue, which
    publishes it one round later (the commit runs while the next batch computes). All writers pick
    at the same moment, so each sees the others' claims of the round before. Returns (rows computed,
    rows committed)."""
    jobs = [Sample(f"s{index:03d}", Job(4.0)) for index in range(samples)]
    queues = [JobQueue(jobs, batch_size, seed) for seed in seeds]
    committed: set[str] = set()
    claims: list[set[str]] = [set() for _ in range(writers)]
    in_commit = [[] for _ in range(writers)]
    computed = published = 0
    while True:
        others = [
            set().union(*(claims[o] for o in range(writers) if o != w)) if use_claims else set()
            for w in range(writers)
        ]
        batches = [queue.next_batch(committed, others[w]) for w, queue in enumerate(queues)]
        if not any(batches) and not any(in_commit):
            return computed, published
        computed += sum(len(batch) for batch in batches)
        for writer, batch in enumerate(batches):  # the previous commit publishes while this batch ran
            claims[writer] = {sample.sample_id for sample in (*batch, *in_commit[writer])}
            committed.update(sample.sample_id for sample in in_commit[writer])
            published += len(in_commit[writer])
            in_commit[writer] = without_committed(batch, committed)


def test_three_writers_compute_at_most_the_batches_in_flight_twice():
    samples, writers, batch_size = 24, 3, 2
    in_flight = writers * 2 * batch_size  # per writer: the batch computing and the one committing
    for trial in range(20):
        computed, committed = simulate(
            writers, samples, batch_size, seeds=[trial * 10 + w for w in range(writers)]
        )
        assert committed <= computed <= samples + in_flight, (trial, computed)
        assert committed >= samples
    # without claims, a random order alone: collisions with batches in flight all along the run
    unclaimed = [
        simulate(writers, samples, batch_size, [trial * 10 + w for w in range(writers)], False)[0]
        for trial in range(20)
    ]
    assert max(unclaimed) > samples + in_flight
    # the same order for all and no claims (what every writer did before): each sample computed by every writer
    assert (
        simulate(writers, samples, batch_size, seeds=[None] * writers, use_claims=False)[0]
        == writers * samples
    )


def test_a_queue_skips_what_was_committed_and_keeps_guidance_batches_apart():
    jobs = [Sample(f"s{index}", Job(2.0 if index % 3 else 5.0)) for index in range(12)]
    queue = JobQueue(jobs, batch_size=3, seed=7)
    committed = {"s1", "s2", "s4"}
    seen = []
    while batch := queue.next_batch(committed):
        assert len({sample.job.guidance_scale for sample in batch}) == 1 and len(batch) <= 3
        seen += [sample.sample_id for sample in batch]
    assert sorted(seen) == sorted(f"s{index}" for index in range(12) if f"s{index}" not in committed)


@pytest.mark.slow
def test_three_capture_processes_on_one_store(tmp_path):
    teacher = save_tiny_sd_pipeline(tmp_path / "sd")
    prompts = write_prompts(tmp_path, [f"a red {index} on blue" for index in range(12)])
    config = tiny_capture_config(tmp_path / "store", teacher, prompts, seeds_per_prompt=2, batch_size=2)
    command = [PYTHON, "-m", "teacher_cache", *cli_args(config)]
    processes = [
        subprocess.Popen(
            command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    computed = 0
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        written, dropped = re.search(r"(\d+) samples written.* (\d+) dropped", out).groups()
        computed += int(written) + int(dropped)
    assert computed <= 24 + 3 * 2 * 2  # samples + each writer's two batches in flight
    reader = StoreReader(config.out)
    assert len(reader) == 24 and verify_store(config.out) == []
    assert len(all_manifest_rows(tmp_path / "store")) == 24 + reader.duplicates.num_rows


def test_store_size_counts_a_file_another_writer_removes_mid_walk_as_gone(tmp_path, monkeypatch):
    """The CI failure this pins: a writer measuring the store while another deletes its claim file."""
    from shared.store.paths import StoreLocation

    (tmp_path / "claims").mkdir()
    (tmp_path / "kept.bin").write_bytes(b"x" * 10)
    (tmp_path / "claims" / "w1.json").write_bytes(b"y" * 7)
    location = StoreLocation.open(tmp_path)
    real_size = location.fs.size

    def size_after_the_claim_is_released(path):
        if path.endswith("w1.json"):
            (tmp_path / "claims" / "w1.json").unlink()
        return real_size(path)

    monkeypatch.setattr(location.fs, "size", size_after_the_claim_is_released)
    assert location.total_bytes() == 10
