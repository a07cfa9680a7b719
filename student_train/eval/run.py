"""`student-train eval`: a student at K steps against the teacher at K steps and at its full count.

Two eval sets: the `val` split of the training store (rows never trained on) and every row of the
unseen-prompt store (prompts absent from the training store). For each K in `--steps`, from the
cached initial noise and the cached conditioning of each row:

    teacher@K   the teacher's denoiser, DDIM at K steps, CFG at the row's guidance (teacher_baseline.py),
                "trailing" timesteps by default (every K starts at t = T-1, from the pure cached noise)
    student@K   the student, its method's few-step sampler (sampling.py)

Both are decoded with the teacher's VAE (eval may load the VAE; training never does) and compared,
pairwise, with the teacher's cached many-step output `final_latents` (teacher@S): PSNR and MSE of
the pixels, MSE of the latents. The judge (shared/judge.py) scores prompt adherence and the Frechet
distance to real digits of every column, teacher@S included. Writes OUT/metrics.json (settings,
one record per (set, model, steps), the issue's targets) and OUT/grid.png (teacher@S | teacher@K |
student@K for a few prompts of each set); prints the table.

This module holds the settings and the run; the stores are opened by eval_sets.py, the models and
the judge loaded by eval_models.py, the columns made by eval_generation.py and scored, checked
against the targets and tabulated by eval_report.py.

    run(EvalConfig(cache="runs/cache", student="runs/student", out="runs/eval"))
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.config_flags import option
from shared.errors import DistillCacheError
from shared.output_folder import check_output_folder
from student_train.eval.generation import generate
from student_train.eval.models import load_models
from student_train.eval.report import check_targets, format_table, grid_rows, score
from student_train.eval.sets import check_same_teacher, open_eval_sets, read_distill

DEFAULT_STEPS = (1, 2, 4)


def parse_steps(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); raises DistillCacheError for anything else."""
    try:
        steps = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        steps = ()
    if not steps or min(steps) <= 0:
        raise DistillCacheError(
            f"--steps {text!r}: give positive step counts separated by commas, e.g. 1,2,4"
        )
    return tuple(sorted(set(steps)))


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one `student-train eval`; CLI flags map 1:1 onto the fields."""

    cache: str = option(
        None, "the teacher store the student was trained from (its val split is evaluated)", required=True
    )
    student: str = option(None, "the student folder (student-train run --out)", required=True)
    out: str = option(None, "folder for metrics.json and grid.png", required=True)
    unseen_cache: str = option(
        "auto", "store of prompts absent from --cache; 'auto' = <cache>_unseen if it exists, 'none' = skip"
    )
    steps: tuple[int, ...] = option(
        DEFAULT_STEPS, "K: student / teacher step counts, e.g. 1,2,4", parse=parse_steps
    )
    teacher_steps: tuple[int, ...] | None = option(
        None,
        "the K of --steps at which teacher@K is sampled (it costs 2 passes per step: e.g. 1,4 with --steps "
        "1,4,50 for a guidance student; at K = S it is never sampled when its sampler made the cache)",
        parse=parse_steps,
        default_text="every K of --steps",
    )
    teacher: str = option("", "teacher folder or Hub id", default_text="the one the store names")
    teacher_spacing: str = option(
        "trailing",
        "teacher@K's DDIM timesteps: trailing (every K starts at t = T-1) or store (the teacher's own)",
    )
    limit: int = option(0, "at most N rows per eval set (0 = all)")
    batch_size: int = option(16, "rows per batch")
    grid_prompts: int = option(4, "grid rows taken from each eval set")
    judge: bool = option(
        True, "adherence and FD with the digit judge (skipped anyway for prompts outside the digit grammar)"
    )
    timing_calls: int = option(
        20,
        "denoiser calls timed per model for the student / teacher time per call (alternating, median); 0: skip",
    )
    eta: float | None = option(
        None,
        "tcd students: the gamma (TCDScheduler's eta, a pipeline argument) to sample with; training does not "
        "depend on it, so one student can be evaluated at several",
        default_text="the student's distill.json recommended eta (--tcd-gamma)",
    )
    device: str = option("auto", "auto = cuda if available, else cpu")
    dtype: str = option("auto", "auto = float16 on cuda, float32 on cpu")
    threads: int = option(
        1,
        "torch CPU threads on CPU; 0: torch's default (on a busy 2-core machine 2 threads took 17x the CPU "
        "time of 1 per call of the embedded teacher)",
    )


def check_config(config: EvalConfig) -> None:
    """Raise DistillCacheError for settings that cannot work; opens nothing."""
    if not config.steps or min(config.steps) <= 0:
        raise DistillCacheError(f"--steps must be positive step counts, not {config.steps}")
    if config.teacher_steps is not None and not set(config.teacher_steps) <= set(config.steps):
        raise DistillCacheError(
            f"--teacher-steps {','.join(map(str, config.teacher_steps))} must be among --steps "
            f"{','.join(map(str, config.steps))}"
        )
    if config.limit < 0:
        raise DistillCacheError(f"--limit must be 0 (all rows) or a positive count, not {config.limit}")
    if config.batch_size <= 0:
        raise DistillCacheError(f"--batch-size must be at least 1, not {config.batch_size}")
    if config.timing_calls < 0:
        raise DistillCacheError(f"--timing-calls must be >= 0, not {config.timing_calls}")
    if config.grid_prompts < 0:
        raise DistillCacheError(f"--grid-prompts must be >= 0, not {config.grid_prompts}")
    if config.dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise DistillCacheError(f"--dtype {config.dtype!r} is not one of auto, float32, float16, bfloat16")
    from student_train.eval.teacher_baseline import SPACINGS

    if config.teacher_spacing not in SPACINGS:
        raise DistillCacheError(
            f"--teacher-spacing {config.teacher_spacing!r} is not one of {', '.join(SPACINGS)}"
        )
    check_output_folder(config.out, "--out")


def measure_cost(models, eval_set, config: EvalConfig) -> dict:
    """Parameters and time per call of both denoisers on the first `batch_size` rows of `eval_set`."""
    from student_train.eval.cost import denoiser_cost
    from student_train.eval.teacher_baseline import map_tensors, read_conditioning

    rows = eval_set.rows[: config.batch_size]
    parameter = next(models.teacher.parameters())
    noise = eval_set.reader.read("noise", rows).to(parameter.device, parameter.dtype)  # [B, C, h, w]
    cond = map_tensors(read_conditioning(eval_set.reader, rows, "cond"), lambda x: x.to(parameter.device))
    return denoiser_cost(models, noise, cond, config.timing_calls)


def describe_cost(cost: dict) -> str:
    teacher, student = cost["teacher"], cost["student"]
    line = (
        f"denoiser: student {student['parameters'] / 1e6:.3f} M parameters = {cost['parameter_ratio']:.3f} x "
        f"the teacher's {teacher['parameters'] / 1e6:.3f} M"
    )
    if "time_ratio" in cost:
        line += (
            f"; {student['seconds_per_call'] * 1e3:.2f} vs {teacher['seconds_per_call'] * 1e3:.2f} ms per call "
            f"(batch {cost['timing']['batch']}, median of {cost['timing']['calls']} alternating): "
            f"{1 / cost['time_ratio']:.2f}x faster"
        )
    return line


def with_eta(distill: dict, eta: float | None, student: str) -> dict:
    """The student's distill.json with `--eta` as its recommended eta (a copy); refused for a student
    whose sampler takes no eta (only TCDScheduler's gamma is a sampling setting of the student)."""
    if eta is None:
        return distill
    if distill.get("method") != "tcd":
        raise DistillCacheError(
            f"--eta is TCD's gamma; --student {student} is a {distill.get('method')} student, whose sampler "
            "takes no eta: drop --eta"
        )
    if not 0.0 <= eta <= 1.0:
        raise DistillCacheError(f"--eta {eta:g}: TCD's gamma is in [0, 1]")
    return {**distill, "recommended": {**distill["recommended"], "eta": eta}}


def run(config: EvalConfig) -> dict:
    """Evaluate, write OUT/metrics.json and OUT/grid.png, print the table; returns the metrics."""
    from student_train.eval.grid import write_grid

    # Validate every input before loading a model or writing anything.
    check_config(config)
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)  # the process's setting: run() is the entry point
    training, eval_sets = open_eval_sets(config.cache, config.unseen_cache, config.limit)
    distill = with_eta(read_distill(config.student), config.eta, config.student)
    check_same_teacher(distill, training, config.cache)
    prompts = [str(s.reader.manifest.column("prompt")[r]) for s in eval_sets for r in s.rows]
    models = load_models(
        config.student,
        config.teacher,
        config.device,
        config.dtype,
        distill,
        training,
        prompts if config.judge else [],
    )

    cost = measure_cost(models, eval_sets[0], config)
    records, targets, rows, row_titles = [], [], [], []
    for eval_set in eval_sets:
        print(f"eval: {eval_set.name}: {len(eval_set.rows)} rows of {eval_set.url}", flush=True)
        columns = generate(
            eval_set,
            models,
            training.settings,
            config.steps,
            config.batch_size,
            config.teacher_spacing,
            config.steps if config.teacher_steps is None else config.teacher_steps,
        )
        set_records = score(eval_set.name, columns, models.judge, cost)
        records += set_records
        targets += check_targets(
            set_records, eval_set.name, int(eval_set.reader.settings["num_inference_steps"])
        )
        set_rows, prompts_shown = grid_rows(columns, config.grid_prompts)
        rows += set_rows
        row_titles += [f"{eval_set.name}: {prompt}" for prompt in prompts_shown]
        column_titles = list(columns.images)

    metrics = {
        "config": asdict(config),
        "teacher": config.teacher or training.teacher["source"],
        "student": {key: distill.get(key) for key in ("method", "student", "recommended", "sampling")},
        "sets": [{"name": s.name, "store": s.url, "rows": len(s.rows)} for s in eval_sets],
        "denoiser": cost,
        "judge": "digit judge"
        if models.judge is not None
        else "none (--no-judge, or prompts outside the digit grammar)",
        "records": records,
        "targets": targets,
    }
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if rows:
        write_grid(out / "grid.png", rows, column_titles, row_titles)
    print(format_table(records))
    print(describe_cost(cost))
    for target in targets:
        print(
            f"{'met' if target['met'] else 'MISSED'}: {target['set']}: {target['target']} "
            f"({target['value']:.2f} vs {target['threshold']:.2f})"
        )
    print(f"wrote {out / 'metrics.json'} and {out / 'grid.png'}")
    return metrics
