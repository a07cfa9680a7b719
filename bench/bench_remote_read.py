"""Remote-read benchmark: streamed lcm batches/s from moto's S3 server vs local disk, first and second epoch.

    .venv/bin/python -m bench remote_read               # make bench BENCH=remote_read

One store of SAMPLES rows with the fields the lcm loss streams, shaped as the embedded teacher writes
them (trajectory, out_cond, out_uncond, cond.* and uncond.*: float32, 50 steps of 4x8x8 latents),
written in 64-row commits (so 64-row shards, as `teacher-cache run --batch-size 64` leaves them), is
read on local disk and, uploaded, from moto's S3 server (bench/moto_s3.py, a child process).
Batches are made exactly as `student-train run --loader stream` makes them (TrainingData.batches with
its read-ahead, BATCH rows a batch, a fresh permutation each epoch), without the training step: the
loader alone, the strictest comparison (a training step's own time would hide the reads).

Sources, in turns (disk, S3 with --cache-dir, S3 without, ...), each turn with a fresh cache folder:
- disk: the store on local disk (the page cache warm after the first turn);
- s3 + cache: `--cache-dir`: the first epoch downloads each shard once, the second reads local copies;
- s3: no local cache, every epoch from the server (first turn only: the slowest by far).
Figures: medians over TURNS of batches per wall second, per epoch; ratios to disk of the same epoch.
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
TURNS = int(os.environ.get("BENCH_REMOTE_TURNS", "3"))
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


def epoch_rates(url: str, cache_dir: str | None) -> list[float]:
    """Batches per wall second of two epochs streamed as student-train run streams them."""
    from student_train.data.batches import TrainingData, rows_for_micro_step

    reader = StoreReader(url, cache_dir=cache_dir)
    data = TrainingData(reader, LCM_FIELDS, split="all", loader="stream")
    per_epoch = len(data) // BATCH
    rates = []
    for epoch in range(2):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        schedule = (rows_for_micro_step(len(data), BATCH, 0, step) for step in steps)
        started = time.perf_counter()
        count = sum(1 for _ in data.batches(schedule, "cpu", READ_AHEAD))
        rates.append(count / (time.perf_counter() - started))
    return rates


def main() -> dict:
    from bench.moto_s3 import moto_s3

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="remote-read-", dir="runs" if Path("runs").is_dir() else None))
    try:
        disk = str(folder / "store")
        build(disk)
        with moto_s3() as new_bucket:
            url = new_bucket() + "/store"
            from shared.store.paths import StoreLocation

            location = StoreLocation.open(url)
            location.fs.put(disk, location.root, recursive=True)
            rates: dict[str, list[list[float]]] = {"disk": [], "s3 + cache": [], "s3": []}
            for turn in range(TURNS):
                rates["disk"].append(epoch_rates(disk, None))
                cache = folder / f"cache-{turn}"
                rates["s3 + cache"].append(epoch_rates(url, str(cache)))
                shutil.rmtree(cache)
                if turn == 0:  # the slowest by far: once
                    rates["s3"].append(epoch_rates(url, None))
                print(f"turn {turn}: { ({name: runs[-1] for name, runs in rates.items()}) }", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    medians = {
        name: [statistics.median(run[epoch] for run in runs) for epoch in range(2)]
        for name, runs in rates.items()
    }
    print(f"\n{SAMPLES} samples, batches of {BATCH}, read-ahead {READ_AHEAD}; medians of {TURNS} turns")
    print("| source | epoch 1 batches/s | epoch 2 batches/s | epoch 1 vs disk | epoch 2 vs disk |")
    print("|---|---:|---:|---:|---:|")
    for name, (first, second) in medians.items():
        print(
            f"| {name} | {first:.1f} | {second:.1f} | {first / medians['disk'][0]:.2f}x "
            f"| {second / medians['disk'][1]:.2f}x |"
        )
    sample_bytes = sum(int(np.prod(spec.shape)) * 4 for spec in FIELDS.values())
    return {
        "samples": SAMPLES,
        "batch": BATCH,
        "read_ahead": READ_AHEAD,
        "bytes_per_sample": sample_bytes,
        "turns": rates,
        "medians_batches_per_second": medians,
        "second_epoch_s3_cache_vs_disk": medians["s3 + cache"][1] / medians["disk"][1],
    }


if __name__ == "__main__":
    main()
