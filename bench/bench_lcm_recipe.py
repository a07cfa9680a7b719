"""The recommended lcm recipe against the teacher in the loop, on the embedded teacher (issue 10).

    flock /tmp/distillcache-heavy.lock .venv/bin/python -m bench.bench_lcm_recipe cost   # timed part
    .venv/bin/python -m bench.bench_lcm_recipe quality                                  # evals, no lock
    .venv/bin/python -m bench.bench_lcm_recipe points     # lcm --points noised / trajectory / mix
    make bench BENCH=lcm_recipe                                                         # all three

cost     the recipe's cache (RECIPE_CACHE: `--fields noised,cond --images digits`, the bundled train
         prompts), then for each seed in SEEDS the cached student (`student-train run --points noised`)
         and the online one (bench/online_lcm.py: the same loop and loss, the teacher pipeline in
         memory making each batch's noised points), alternating. Each runs in its own process; its
         CPU time (user + sys, all threads) and peak RSS come from os.wait4. Teacher passes are
         counted: cache rows x points x 2 (cond + uncond), online updates x batch x 2.
quality  the unseen-prompt store (default_unseen.txt x UNSEEN_SEEDS, as `make cache` writes
         runs/cache_unseen) and `student-train eval` of every student at 1, 2, 4 steps: adherence
         and FD of the judge on unseen prompts; the student samples with LCMScheduler's timesteps
         and step rule at guidance 1 (a stock pipeline gives the same at 1 step, tested).
points   the same lcm LoRA from one store holding both trajectories and noised points (POINTS_CACHE,
         the default cache's 504 prompts x 4 seeds), --points noised / trajectory / mix, each seed.

Figures go to runs/bench/lcm_recipe/results.json; every run folder keeps its logs and metrics.json.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("runs/bench/lcm_recipe")
RESULTS = ROOT / "results.json"
TEACHER_CACHE = [
    sys.executable,
    "-m",
    "teacher_cache",
    "run",
    "--batch-size",
    "64",
    "--threads",
    "1",
    "--no-progress",
]
RECIPE_CACHE = ["--fields", "noised,cond", "--images", "digits", "--seeds-per-prompt", "16",
                "--noised-points-per-sample", "1"]  # fmt: skip
POINTS_CACHE = ["--fields", "trajectory,out,cond,noised", "--images", "digits", "--seeds-per-prompt", "4",
                "--noised-points-per-sample", "4"]  # fmt: skip
UNSEEN_SEEDS = 2  # as `make cache` writes runs/cache_unseen: 56 prompts x 2 seeds
# The comparison: LoRA r 64, lr 1e-4, batch 16, 500 updates, pseudo-Huber, w in [2, 6], 1 thread.
TRAIN = ["--method", "lcm", "--student", "lora", "--train-steps", "500", "--batch-size", "16", "--lr", "1e-4",
         "--loss", "huber", "--w-min", "2", "--w-max", "6", "--threads", "1", "--log-every", "50"]  # fmt: skip
SEEDS = (0, 1)
EVAL_STEPS = "1,2,4"


def measured(command: list[str], log: Path) -> dict:
    """Run `command` to completion (output to `log`); its CPU seconds and peak RSS from the kernel."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"}
        )
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return {
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "wall_seconds": time.perf_counter() - started,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux: KiB
    }


def store_rows(store: Path) -> int:
    from shared.store import StoreReader

    return StoreReader(str(store)).manifest.num_rows


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def save(results: dict) -> dict:
    ROOT.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged = {**earlier, **results}
    RESULTS.write_text(json.dumps(merged, indent=2))
    return merged


# ---------------------------------------------------------------- cost (run under the lock)


def cost() -> dict:
    cache = ROOT / "cache"
    if cache.exists():
        raise RuntimeError(f"{cache} exists: remove it, the cache's cost is measured from empty")
    run_cache = measured([*TEACHER_CACHE, "--out", str(cache), *RECIPE_CACHE], ROOT / "cache.log")
    rows, points = store_rows(cache), int(flag(RECIPE_CACHE, "--noised-points-per-sample"))
    runs = {"cache": {**run_cache, "rows": rows, "teacher_passes": rows * points * 2}}
    updates, batch = int(flag(TRAIN, "--train-steps")), int(flag(TRAIN, "--batch-size"))
    sides = {  # side: (module, extra flags, seeds)
        "cached": ("student_train", ["--loader", "auto"], SEEDS),
        "online": ("bench.online_lcm", [], SEEDS),
        "cached_memory": ("student_train", ["--loader", "memory"], SEEDS[:1]),  # auto's alternative
    }
    for seed in SEEDS:
        for side, (module, extra, seeds) in sides.items():
            if seed not in seeds:
                continue
            out = ROOT / f"{side}_seed{seed}"
            command = [sys.executable, "-m", module, *(["run"] if module == "student_train" else [])]
            command += ["--cache", str(cache), "--out", str(out), *TRAIN, "--seed", str(seed)]
            command += ["--points", "noised", *extra]
            runs[out.name] = {**measured(command, ROOT / f"{out.name}.log"), "side": side, "seed": seed}
            runs[out.name]["teacher_passes"] = updates * batch * 2 if side == "online" else 0
    summary = cost_summary(runs)
    print_cost(runs, summary)
    return save({"cost": {"runs": runs, "summary": summary}})


def cost_summary(runs: dict) -> dict:
    """Cache + 1 / + 3 students against 1 / 3 online runs (medians over seeds), and peak RSS."""
    cached = statistics.median(r["cpu_seconds"] for r in runs.values() if r.get("side") == "cached")
    online = statistics.median(r["cpu_seconds"] for r in runs.values() if r.get("side") == "online")
    cache = runs["cache"]["cpu_seconds"]
    rss = {
        side: max(r["peak_rss_mib"] for r in runs.values() if r.get("side") == side)
        for side in ("cached", "online")
    }
    memory = [r["cpu_seconds"] for r in runs.values() if r.get("side") == "cached_memory"]
    return {
        "cached_memory_student_cpu_seconds": statistics.median(memory) if memory else None,
        "cached_student_cpu_seconds": cached,
        "online_student_cpu_seconds": online,
        "teacher_share_of_an_online_step": (online - cached) / online,
        "cache_plus_one_over_online": (cache + cached) / online,
        "cache_plus_three_over_three_online": (cache + 3 * cached) / (3 * online),
        "peak_rss_cached_over_online": rss["cached"] / rss["online"],
        "peak_rss_mib": rss,
    }


def print_cost(runs: dict, summary: dict) -> None:
    print("| run | CPU (s) | wall (s) | peak RSS (MiB) | teacher passes |")
    print("|---|---:|---:|---:|---:|")
    for name, run in runs.items():
        print(
            f"| {name} | {run['cpu_seconds']:.0f} | {run['wall_seconds']:.0f} | {run['peak_rss_mib']:.0f} | "
            f"{run['teacher_passes']:,} |"
        )
    print(
        f"cache + 1 student / 1 online run: {summary['cache_plus_one_over_online']:.2f}x CPU (target <= 1.2); "
        f"cache + 3 / 3 online: {summary['cache_plus_three_over_three_online']:.2f}x (target <= 0.5); "
        f"teacher share of an online step: {summary['teacher_share_of_an_online_step']:.2f}; "
        f"peak RSS cached / online: {summary['peak_rss_cached_over_online']:.2f} (target <= 1)"
    )


# ---------------------------------------------------------------- quality (no lock needed)


def unseen_store() -> Path:
    unseen = ROOT / "unseen"
    if not (unseen / "store.json").exists():
        measured(
            [*TEACHER_CACHE, "--out", str(unseen), "--prompts", "teacher_cache/prompts/default_unseen.txt",
             "--seeds-per-prompt", str(UNSEEN_SEEDS), "--fields", "noise,final_latents,cond,preview"],
            ROOT / "unseen.log",
        )  # fmt: skip
    return unseen


def evaluate(cache: Path, student: Path) -> dict:
    """Unseen-prompt adherence at 1 / 2 / 4 steps and FD at 4 (the judge), from student-train eval."""
    out = student / "eval"
    if not (out / "metrics.json").exists():
        measured(
            [sys.executable, "-m", "student_train", "eval", "--cache", str(cache), "--student", str(student),
             "--out", str(out), "--unseen-cache", str(unseen_store()), "--steps", EVAL_STEPS],
            student / "eval.log",
        )  # fmt: skip
    records = json.loads((out / "metrics.json").read_text())["records"]
    unseen = {(r["model"], r["steps"]): r for r in records if r["set"] == "unseen"}
    figures = {f"adherence@{k}": unseen[("student", k)]["adherence"] for k in (1, 2, 4)}
    return {
        **figures,
        "fd@4": unseen[("student", 4)]["fd"],
        "teacher@50 adherence": unseen[("teacher", 50)]["adherence"],
    }


def quality() -> dict:
    """The cost part's cached and online students (cached_memory_seed0 is skipped: `auto` reads this
    small store into memory too, so it has cached_seed0's weights), and each side's range over seeds."""
    figures = {
        folder.name: evaluate(ROOT / "cache", folder)
        for side in ("cached", "online")
        for folder in sorted(ROOT.glob(f"{side}_seed*"))
        if (folder / "distill.json").exists()
    }
    ranges = {
        side: {
            figure: [min(values), max(values)]
            for figure in ("adherence@1", "adherence@2", "adherence@4", "fd@4")
            for values in [[f[figure] for name, f in figures.items() if name.startswith(f"{side}_")]]
            if values
        }
        for side in ("cached", "online")
    }
    print_quality(figures)
    return save({"quality": figures, "quality_ranges": ranges})


def points() -> dict:
    cache = ROOT / "points_cache"
    if not (cache / "store.json").exists():
        measured([*TEACHER_CACHE, "--out", str(cache), *POINTS_CACHE], ROOT / "points_cache.log")
    figures = {}
    for seed in SEEDS:
        for kind in ("noised", "trajectory", "mix"):
            out = ROOT / f"points_{kind}_seed{seed}"
            if not (out / "distill.json").exists():
                command = [
                    sys.executable,
                    "-m",
                    "student_train",
                    "run",
                    "--cache",
                    str(cache),
                    "--out",
                    str(out),
                ]
                measured([*command, *TRAIN, "--seed", str(seed), "--points", kind], ROOT / f"{out.name}.log")
            figures[out.name] = evaluate(cache, out)
    print_quality(figures)
    return save({"points": figures})


def print_quality(figures: dict) -> None:
    print("| student | adherence @1 / @2 / @4 (%) | FD @4 |")
    print("|---|---|---:|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['adherence@1']:.1f} / {f['adherence@2']:.1f} / {f['adherence@4']:.1f} | {f['fd@4']:.1f} |"
        )


PARTS = {"cost": cost, "quality": quality, "points": points}


def main() -> dict:
    return {name: part() for name, part in PARTS.items()}


if __name__ == "__main__":
    chosen = sys.argv[1:] or list(PARTS)
    for name in chosen:
        PARTS[name]()
