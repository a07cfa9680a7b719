"""Updates per second of `student-train run` on 1 and 2 processes, side by side (DDP over gloo on the CPU).

    make bench BENCH=ddp          # = python -m bench ddp

Both runs use the same per-process micro-batch, so 2 processes train a global batch twice as large:
updates/s shows what DDP's gradient all-reduce and the second process cost, and samples/s what the
extra process buys. The store is bench_train.py's: the embedded teacher, 64 rows (one found at its path
is checked against that, by its store.json and manifest, and built again when it differs). Each run is the
real command line (`python -m student_train run`, or `accelerate launch --multi_gpu --num_processes 2
-m student_train run`), with one torch thread per process. The time is the training loop's own time
(distill.json "train.seconds"), without start-up and export. The 1- and 2-process runs alternate,
REPEATS times each, and medians are reported. On a machine with 2 cores that other jobs share,
2 processes cannot be twice as fast: read the figures as what the machine had to give at the time.
"""

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.bench_train import BENCH_STORE, CACHE_VARIANT, BenchSettings, ensure_bench_store

PROCESSES = (1, 2)
REPEATS = 3
RUN = dict(method="lcm", student="full", train_steps=40, batch_size=16)
OUT = Path("runs/bench/ddp")


def command(processes: int, out: Path) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in RUN.items()]
    return [*launcher, "-m", "student_train", "run", "--cache", str(BENCH_STORE), "--out", str(out), *flags,
            "--log-every", str(RUN["train_steps"]), "--threads", "1"]  # fmt: skip


def one_run(processes: int, repeat: int) -> dict:
    out = OUT / f"p{processes}_{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(command(processes, out), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{processes}-process run failed:\n{result.stderr[-3000:]}")
    train = json.loads((out / "distill.json").read_text())["train"]
    updates_per_second = train["train_steps"] / train["seconds"]
    return {
        "processes": train["num_processes"],
        "global_batch": train["global_batch"],
        "seconds": train["seconds"],
        "updates_per_second": updates_per_second,
        "samples_per_second": updates_per_second * train["global_batch"],
    }


def main() -> dict:
    ensure_bench_store(BenchSettings(variant=CACHE_VARIANT, store=str(BENCH_STORE)), RUN["method"])
    runs = {processes: [] for processes in PROCESSES}
    for repeat in range(REPEATS):
        for processes in PROCESSES:
            runs[processes].append(one_run(processes, repeat))
    print(
        "| processes | global batch | updates/s (median of 3) | samples/s | runs: updates/s |\n|---:|---:|---:|---:|---|"
    )
    summary = {}
    for processes, results in runs.items():
        median = {
            key: statistics.median(run[key] for run in results)
            for key in ("updates_per_second", "samples_per_second")
        }
        summary[processes] = {**median, "global_batch": results[0]["global_batch"], "runs": results}
        each = ", ".join(f"{run['updates_per_second']:.2f}" for run in results)
        print(
            f"| {processes} | {results[0]['global_batch']} | {median['updates_per_second']:.2f} | {median['samples_per_second']:.1f} | {each} |"
        )
    return {"settings": RUN, "results": summary}


if __name__ == "__main__":
    main()
