"""Remote-read benchmark: streamed lcm batches/s from moto's S3 server vs local disk, first and second epoch.

    .venv/bin/python -m bench remote_read               # make bench BENCH=remote_read

One store of SAMPLES rows with the fields the lcm loss streams, shaped as the embedded teacher writes
them (trajectory, out_cond, out_uncond, cond.* and uncond.*: float32, 50 steps of 4x8x8 latents),
written in 64-row commits (so 64-row shards, as `teacher-cache run --batch-size 64` leaves them), is
read on local disk and, uploaded, from moto's S3 server (bench/moto_s3.py, a child process).
Batches are made exactly as `student-train run --loader stream` makes them (TrainingData.batches with
its read-ahead, BATCH rows a batch, a fresh permutation each epoch), without the training step: the
loader alone, the strictest comparison (a training step's own time would hide the reads).

Sources: `disk` (the store on local disk), `s3 + cache` (StoreReader(url, cache_dir=...), what
`student-train run` does by default, --cache-dir auto: the first epoch downloads each shard once, later
epochs read the local copies) and `s3` (--cache-dir none: every epoch from the server; one epoch).
First epochs once each; then PAIRS later epochs of disk and s3 + cache back to back, the order
alternating (disk first, then s3 first, ...), each pair reading the same rows. Figures: batches per
wall second and this process's CPU seconds per batch; the target ratio is the median over the pairs
of (s3 + cache) / disk batches per second, each pair measured within a minute (the machine's load
moves the absolute rates by 2x between minutes).
"""

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_store import bench_writer
from shared.store import FieldSpec, StoreReader

SAMPLES = int(os.environ.get("BENCH_REMOTE_SAMPLES", "512"))
BATCH = 32
COMMIT_ROWS = 64
PAIRS = int(os.environ.get("BENCH_REMOTE_PAIRS", "5"))
READ_AHEAD = 4  # student-train run's default --read-ahead
LATENT = (4, 8, 8)
FIELDS = {
    "trajectory": FieldSpec("float32", (51, *LATENT)),
    "out_cond": FieldSpec("float32", (50, *LATENT)),
    "out_uncond": FieldSpec("float32", (50, *LATENT)),
    "cond.encoder_hidden_states": FieldSpec("float32", (8, 64)),
    "uncond.encoder_hidden_states": FieldSpec("float32", (8, 64)),
}
LCM_FIELDS = ("trajectory", "out_cond", "out_uncond")  # get_method("lcm").fields(config)


def build(url: str) -> None:
    writer = bench_writer(url, FIELDS)
    rng = np.random.default_rng(0)
    for start in range(0, SAMPLES, COMMIT_ROWS):
        rows = [
            {"sample_id": f"{index:08d}", "prompt": "p", "negative_prompt": "", "seed": index,
             "guidance_scale": 7.5, "num_inference_steps": 50}
            for index in range(start, start + COMMIT_ROWS)
        ]  # fmt: skip
        arrays = {
            name: rng.standard_normal((COMMIT_ROWS, *spec.shape)).astype(np.float32)
            for name, spec in FIELDS.items()
        }
        writer.commit(rows, arrays)


def open_source(url: str, cache_dir: str | None):
    """The training data of one source, as student-train run --loader stream opens it."""
    from student_train.data.batches import TrainingData

    reader = StoreReader(url, cache_dir=cache_dir or "none")
    assert (reader.cache is not None) == bool(cache_dir)
    return TrainingData(reader, LCM_FIELDS, split="all", loader="stream")


def epoch(data, number: int) -> dict:
    """Epoch `number` (its own permutation) streamed as student-train run streams it: batches per wall
    second and this process's CPU seconds per batch."""
    from student_train.data.batches import rows_for_micro_step

    per_epoch = len(data) // BATCH
    steps = range(number * per_epoch, (number + 1) * per_epoch)
    schedule = (rows_for_micro_step(len(data), BATCH, 0, step) for step in steps)
    started, cpu_started = time.perf_counter(), time.process_time()
    count = sum(1 for _ in data.batches(schedule, "cpu", READ_AHEAD))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"batches_per_second": count / wall, "cpu_seconds_per_batch": cpu / count}


def main() -> dict:
    from bench.moto_s3 import moto_s3
    from shared.store.paths import StoreLocation

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="remote-read-", dir="runs" if Path("runs").is_dir() else None))
    try:
        disk_url = str(folder / "store")
        build(disk_url)
        with moto_s3() as new_bucket:
            url = new_bucket() + "/store"
            location = StoreLocation.open(url)
            location.fs.put(disk_url, location.root, recursive=True)
            disk, cached = open_source(disk_url, None), open_source(url, str(folder / "cache"))
            first = {
                "disk": epoch(disk, 0),
                "s3 + cache": epoch(cached, 0),
                "s3": epoch(open_source(url, None), 0),
            }
            print(f"first epochs: {first}", flush=True)
            pairs = []
            for number in range(1, PAIRS + 1):
                order = [("disk", disk), ("s3 + cache", cached)][:: 1 if number % 2 else -1]
                pair = {name: epoch(data, number) for name, data in order}
                pairs.append(pair)
                print(f"pair {number}: {pair}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rate_ratios = [
        pair["s3 + cache"]["batches_per_second"] / pair["disk"]["batches_per_second"] for pair in pairs
    ]
    cpu_ratios = [
        pair["disk"]["cpu_seconds_per_batch"] / pair["s3 + cache"]["cpu_seconds_per_batch"] for pair in pairs
    ]
    later = {
        name: {key: statistics.median(pair[name][key] for pair in pairs) for key in pairs[0][name]}
        for name in ("disk", "s3 + cache")
    }
    print(
        f"\n{SAMPLES} samples, batches of {BATCH}, read-ahead {READ_AHEAD}; later epochs: medians of {PAIRS} pairs"
    )
    print(
        "| source | epoch 1 batches/s | later epochs batches/s | later epochs CPU s/batch | later epochs vs disk |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in ("disk", "s3 + cache", "s3"):
        rate = later.get(name, first[name])
        ratio = (
            f"{statistics.median(rate_ratios):.2f}x"
            if name == "s3 + cache"
            else ("1.00x" if name == "disk" else "")
        )
        print(
            f"| {name} | {first[name]['batches_per_second']:.2f} | {rate['batches_per_second']:.2f} "
            f"| {rate['cpu_seconds_per_batch']:.3f} | {ratio} |"
        )
    print(f"pair ratios (s3 + cache / disk, batches/s): {[round(ratio, 2) for ratio in rate_ratios]}")
    print(f"pair ratios (disk / s3 + cache, CPU s per batch): {[round(ratio, 2) for ratio in cpu_ratios]}")
    sample_bytes = sum(int(np.prod(spec.shape)) * 4 for spec in FIELDS.values())
    return {
        "samples": SAMPLES,
        "batch": BATCH,
        "read_ahead": READ_AHEAD,
        "bytes_per_sample": sample_bytes,
        "first_epoch": first,
        "later_epoch_pairs": pairs,
        "later_epoch_s3_cache_vs_disk": statistics.median(rate_ratios),
        "later_epoch_s3_cache_vs_disk_by_pair": rate_ratios,
        "later_epoch_cpu_disk_vs_s3_cache_by_pair": cpu_ratios,
    }


if __name__ == "__main__":
    main()
