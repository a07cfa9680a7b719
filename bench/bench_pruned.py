"""Block-pruned students (issue 11): parameters and time per denoiser call of the teacher and its
BK-SDM levels, timed side by side in one process.

    make bench BENCH=pruned                # = python -m bench pruned
    python -m bench.bench_pruned --repeats 5 --calls 30 --batch 32

The students are `prune_unet(teacher, level)` (student_train/students/pruning.py): a denoiser's cost
depends on its architecture only, so untrained pruned weights time exactly as trained ones. Every
repeat times all models alternately on the same inputs (student_train.eval.cost.seconds_per_call:
teacher, base, small, small, base, teacher, ...), so a busy machine slows them alike; the figures
are the medians over repeats of each repeat's median. The batch is 32 rows = one CFG step of
`student-train eval`'s 16-row batches. CPU time per call is reported too (one torch thread).
"""

import argparse
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from shared.config_flags import add_config_flags, config_from_args


@dataclass(frozen=True)
class PrunedBenchSettings:
    teacher: str = ""  # a diffusers folder / Hub id holding unet/ ("" = the embedded teacher)
    levels: str = "base,small,tiny"  # levels the teacher cannot build are listed as refused
    batch: int = 32
    calls: int = 30  # timed calls per model and repeat
    repeats: int = 3
    threads: int = 1


def build_models(settings: PrunedBenchSettings) -> tuple[dict, dict]:
    from shared.errors import DistillCacheError
    from student_train.students.denoiser import load_denoiser
    from student_train.students.pruning import prune_unet
    from teacher_cache.config import EMBEDDED_TEACHER

    teacher = load_denoiser(settings.teacher or str(EMBEDDED_TEACHER)).eval()
    models, refused = {"teacher": teacher}, {}
    for level in settings.levels.split(","):
        try:
            models[level] = prune_unet(teacher, level)[0].eval()
        except DistillCacheError as error:
            refused[level] = str(error)
    return models, refused


def main(argv: list[str] | None = None) -> dict:
    from student_train.eval.cost import parameter_count, seconds_per_call
    from student_train.students.denoiser import call_denoiser

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flags(parser, PrunedBenchSettings)
    settings = config_from_args(PrunedBenchSettings, parser.parse_args(argv or []))
    torch.set_num_threads(settings.threads)
    models, refused = build_models(settings)
    config = models["teacher"].config
    generator = torch.Generator().manual_seed(0)
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    x_t = torch.randn(settings.batch, config.in_channels, size, size, generator=generator)
    cond = {
        "encoder_hidden_states": torch.randn(
            settings.batch, 8, config.cross_attention_dim, generator=generator
        )
    }
    timesteps = torch.full((settings.batch,), 500.0)

    def timed(model):
        return lambda: call_denoiser(model, x_t, timesteps, cond)

    wall = {name: [] for name in models}
    for _ in range(settings.repeats):
        medians = seconds_per_call({name: timed(model) for name, model in models.items()}, settings.calls)
        for name, value in medians.items():
            wall[name].append(value)
    cpu = cpu_seconds_per_call(models, x_t, timesteps, cond, settings)
    teacher_params = parameter_count(models["teacher"])
    teacher_wall = statistics.median(wall["teacher"])
    rows = {}
    for name, model in models.items():
        seconds = statistics.median(wall[name])
        rows[name] = {
            "parameters": parameter_count(model),
            "parameter_ratio": parameter_count(model) / teacher_params,
            "seconds_per_call": seconds,
            "cpu_seconds_per_call": cpu[name],
            "speedup": teacher_wall / seconds,
            "cpu_speedup": cpu["teacher"] / cpu[name],
            "repeat_medians": wall[name],
        }
    print(
        f"batch {settings.batch}, {settings.calls} alternating calls x {settings.repeats} repeats, 1 thread"
    )
    print("| denoiser | parameters | x teacher | ms / call (wall) | speedup | ms / call (CPU) | speedup |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['parameters']:,} | {row['parameter_ratio']:.3f} | {1e3 * row['seconds_per_call']:.1f} "
            f"| {row['speedup']:.2f}x | {1e3 * row['cpu_seconds_per_call']:.1f} | {row['cpu_speedup']:.2f}x |"
        )
    for level, reason in refused.items():
        print(f"| {level} | refused: {reason} |")
    return {"settings": asdict(settings), "models": rows, "refused": refused}


def cpu_seconds_per_call(models: dict, x_t, timesteps, cond, settings: PrunedBenchSettings) -> dict:
    """Median CPU seconds per call of each model, alternating as seconds_per_call does."""
    from student_train.students.denoiser import call_denoiser

    names = list(models)
    seconds = {name: [] for name in names}
    with torch.no_grad():
        for repeat in range(settings.calls * settings.repeats):
            for name in names if repeat % 2 == 0 else reversed(names):
                start = time.process_time()
                call_denoiser(models[name], x_t, timesteps, cond)
                seconds[name].append(time.process_time() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
