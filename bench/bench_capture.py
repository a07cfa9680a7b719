"""Capture overhead of `teacher-cache run`, and bytes per sample for each field set.

    python -m bench capture          # (make bench runs every bench_*.py)

Overhead = wall time of `run(config)` (load, hash, capture, commit) / wall time of plain `pipe(...)`
(load, then the same prompts, seeds, steps, guidance and batch size, images decoded as the capture's
previews are), timed alternately, median of REPEATS runs each; the same ratio of CPU time (all
threads) is printed too, as it is steadier than wall time on a shared machine. Measured on the embedded teacher,
where the teacher is cheapest and capture overhead shows most (a tiny random SD pipeline stands in
until the embedded teacher exists; the result says which). Targets: <= 1.05 without features,
<= 1.15 with the outputs of every down/mid/up block at 4 steps.
"""

import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from shared.store import StoreReader
from shared.teacher import loading_bars_hidden
from teacher_cache.config import ALL_FIELD_GROUPS, DEFAULT_TRAIN_PROMPTS, EMBEDDED_TEACHER, CaptureConfig
from teacher_cache.prompts import read_jobs
from teacher_cache.runner import run, with_resolved_guidance

PROMPTS = 32
BATCH_SIZE = 8
STEPS = 50
REPEATS = 5
THREADS = 1  # torch threads for both sides: on a shared 2-core machine, more threads mostly add noise
UNET_BLOCKS = ("down_blocks.*", "mid_block", "up_blocks.*")
# What observing the pipeline costs: the noised group is left out, as its points are extra teacher
# passes (2 per point) that plain pipe(...) does not make, not overhead.
OBSERVED_GROUPS = tuple(group for group in ALL_FIELD_GROUPS if group != "noised")
WITHOUT_FEATURES = tuple(group for group in OBSERVED_GROUPS if group != "features")
OVERHEAD_CASES = {  # name: (CaptureConfig overrides, target ratio)
    "no features": (dict(fields=WITHOUT_FEATURES), 1.05),
    "features, all blocks at 4 steps": (dict(fields=OBSERVED_GROUPS, features=UNET_BLOCKS), 1.15),
}
DIRECT_FIELDS = ("noise", "cond", "final_latents")


def bench_teacher(workdir: Path) -> tuple[str, str]:
    """(teacher folder, label): the embedded teacher, else a tiny random SD pipeline saved here."""
    if (EMBEDDED_TEACHER / "model_index.json").is_file():
        return str(EMBEDDED_TEACHER), "embedded teacher"
    from tests.tiny_models import save_tiny_sd_pipeline

    return str(save_tiny_sd_pipeline(workdir / "tiny_sd")), "tiny random SD (embedded teacher missing)"


def timed(work) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of work()."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_pipeline(config: CaptureConfig) -> None:
    """Load the pipeline and call it over the capture's jobs, as a user would without distillcache."""
    jobs = read_jobs(config.prompts, config.seeds_per_prompt, config.guidance, config.negative_prompt)
    jobs = jobs[: config.limit]
    with loading_bars_hidden():
        pipe = DiffusionPipeline.from_pretrained(config.teacher)
    pipe.set_progress_bar_config(disable=True)
    for start in range(0, len(jobs), config.batch_size):
        batch = jobs[start : start + config.batch_size]
        pipe(
            prompt=[job.prompt for job in batch],
            negative_prompt=[job.negative_prompt for job in batch],
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            generator=[torch.Generator("cpu").manual_seed(job.seed) for job in batch],
            output_type="pt",  # decoded, as the capture decodes for its previews (no PIL conversion)
        )


def bytes_per_sample(store: str) -> tuple[float, float]:
    """(on disk, uncompressed) bytes per committed sample."""
    reader = StoreReader(store)
    rows = reader.manifest.num_rows
    return reader.nbytes / rows, float(sum(spec.sample_nbytes for spec in reader.fields.values()))


def main() -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench_capture_"))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    teacher, label = bench_teacher(workdir)
    base = with_resolved_guidance(
        CaptureConfig(
            out="",
            teacher=teacher,
            prompts=str(DEFAULT_TRAIN_PROMPTS),
            seeds_per_prompt=1,
            steps=STEPS,
            batch_size=BATCH_SIZE,
            limit=PROMPTS,
            progress=False,
        )
    )
    print(
        f"{label}: {PROMPTS} prompts x 1 seed, {STEPS} steps, guidance {base.guidance:g}, batch {BATCH_SIZE}, "
        f"{torch.get_num_threads()} torch threads; median of {REPEATS} alternating runs"
    )
    results: dict = {
        "teacher": label,
        "prompts": PROMPTS,
        "steps": STEPS,
        "batch_size": BATCH_SIZE,
        "cases": {},
    }
    stores: dict[str, str] = {}
    for name, (overrides, target) in OVERHEAD_CASES.items():
        plain, captured = [], []  # (wall, cpu) per repeat
        for repeat in range(REPEATS):
            out = str(workdir / f"{name.split(',')[0].replace(' ', '_')}_{repeat}")
            plain.append(timed(lambda: plain_pipeline(base)))
            config = replace(base, out=out, **overrides)
            captured.append(timed(lambda config=config: run(config)))
            stores[name] = out
        wall = [statistics.median(times[0] for times in runs) for runs in (captured, plain)]
        cpu = [statistics.median(times[1] for times in runs) for runs in (captured, plain)]
        ratio, cpu_ratio = wall[0] / wall[1], cpu[0] / cpu[1]
        results["cases"][name] = {
            "plain_wall_cpu_seconds": plain,
            "capture_wall_cpu_seconds": captured,
            "overhead": round(ratio, 3),
            "cpu_overhead": round(cpu_ratio, 3),
            "target": target,
            "meets_target": ratio <= target,
        }
        print(
            f"  {name:34s} plain {wall[1]:6.2f} s  capture {wall[0]:6.2f} s  overhead x{ratio:.3f} "
            f"(target <= {target}; CPU time x{cpu_ratio:.3f})"
        )
    direct = str(workdir / "direct")
    run(replace(base, out=direct, fields=DIRECT_FIELDS))
    field_sets = {
        "direct (noise, cond, final_latents)": direct,
        "all without features": stores["no features"],
        "all + features (all blocks, 4 steps)": stores["features, all blocks at 4 steps"],
    }
    results["bytes_per_sample"] = {}
    print("  bytes per sample:                     on disk   uncompressed")
    for name, store in field_sets.items():
        on_disk, raw = bytes_per_sample(store)
        results["bytes_per_sample"][name] = {"on_disk": round(on_disk), "uncompressed": round(raw)}
        print(f"  {name:36s} {on_disk / 1024:8.1f} KiB {raw / 1024:8.1f} KiB")
    torch.set_num_threads(previous_threads)
    shutil.rmtree(workdir, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
