"""`student-train compare`: every method's default student from one cache, side by side.

For each recipe (recipes.py): train it into OUT/<recipe> (`student-train run`, resumed; skipped when
a finished run with the same settings is there), evaluate it at 1, 2, 4 steps (guidance also at the
store's own step count) on the val split and the unseen prompts (`student-train eval` into
OUT/<recipe>/eval; skipped when done with the same settings). Then write

    OUT/compare.json   the settings, the cache's cost, per recipe its flags, updates, training seconds
                       and eval records, the teacher's records, the best recipe per step count
    OUT/compare.md     one table per eval set: models x step counts, "adherence % / FD"
    OUT/grid.png       models x step counts, a few unseen prompts per cell

and print the tables and the cache's cost next to the sum of the students' training times.

    run(CompareConfig(cache="runs/cache", out="runs/compare"))
"""

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.config_flags import comma_list, option
from shared.errors import DistillCacheError
from student_train.compare.recipes import RECIPES, select_recipes
from student_train.eval.run import DEFAULT_STEPS, EvalConfig, parse_steps

GRID_STEPS_NOTE = "cells: the same prompts, from the same cached noise"


@dataclass(frozen=True)
class CompareConfig:
    """Settings of one `student-train compare`; CLI flags map 1:1 onto the fields."""

    cache: str = option(None, "the store every student trains on (its val split is evaluated)", required=True)
    out: str = option(None, "folder for the students, compare.json, compare.md and grid.png", required=True)
    recipes: tuple[str, ...] = option(
        (), f"recipes to run, comma-separated ({', '.join(RECIPES)})", parse=comma_list, default_text="all"
    )
    train_steps: int = option(0, "updates for every recipe; 0: each recipe's own budget (docs/methods.md)")
    steps: tuple[int, ...] = option(DEFAULT_STEPS, "step counts to evaluate, e.g. 1,2,4", parse=parse_steps)
    unseen_cache: str = option("auto", "store of unseen prompts ('auto' = <cache>_unseen, 'none' = skip)")
    limit: int = option(0, "at most N eval rows per set (0 = all)")
    grid_prompts: int = option(4, "prompts per grid cell (taken from the unseen set, else val)")
    judge: bool = option(
        True, "adherence and FD with the digit judge (else the tables show PSNR to teacher@S)"
    )
    cache_seconds: float | None = option(
        None, "what phase one took (its summary line)", default_text="estimated from the teacher's passes"
    )
    device: str = option("auto", "auto = cuda if available, else cpu")
    threads: int = option(1, "torch CPU threads (training and eval); 0: torch's default")


def check_config(config: CompareConfig) -> None:
    select_recipes(config.recipes)
    for name in ("train_steps", "limit"):
        if getattr(config, name) < 0:
            raise DistillCacheError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(config, name)}")
    if config.threads < 0:
        raise DistillCacheError(f"--threads must be >= 0, not {config.threads}")
    if config.grid_prompts <= 0:
        raise DistillCacheError(f"--grid-prompts must be >= 1, not {config.grid_prompts}")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise DistillCacheError(f"--out {config.out} exists and is not a folder; give a folder path")


def finished_run(student_dir: Path, train_config) -> dict | None:
    """distill.json of a finished run of exactly these settings in `student_dir`, else None."""
    from student_train.config import TrainConfig
    from student_train.training.checkpoints import is_same_run

    path = student_dir / "distill.json"
    if not path.is_file():
        return None
    distill = json.loads(path.read_text())
    if not is_same_run(TrainConfig(**distill["settings"]).run_digest(), train_config):
        return None
    return distill


def finished_eval(eval_dir: Path, eval_config: EvalConfig) -> dict | None:
    path = eval_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    same = metrics["config"] == json.loads(json.dumps(asdict(eval_config)))
    return metrics if same else None


def train_and_eval(config: CompareConfig, recipe, full_steps: int) -> dict:
    """One recipe: its student (trained unless already there) and its eval records."""
    from student_train.config import TrainConfig
    from student_train.eval.run import run as run_eval
    from student_train.training.loop import train

    student_dir = Path(config.out) / recipe.name
    train_config = TrainConfig(
        cache=config.cache,
        out=str(student_dir),
        train_steps=config.train_steps or recipe.train_steps,
        resume=True,
        threads=config.threads,
        **recipe.flags,
    )
    distill = finished_run(student_dir, train_config)
    if distill is None:
        print(
            f"compare: {recipe.name}: training ({recipe.what}, {train_config.train_steps} updates)",
            flush=True,
        )
        train(train_config)
        distill = json.loads((student_dir / "distill.json").read_text())
    steps = tuple(sorted({*config.steps, *((full_steps,) if recipe.eval_at_teacher_steps else ())}))
    eval_config = EvalConfig(
        cache=config.cache,
        student=str(student_dir),
        out=str(student_dir / "eval"),
        unseen_cache=config.unseen_cache,
        steps=steps,
        teacher_steps=tuple(config.steps),  # at S (guidance) the reference is the cached teacher@S
        limit=config.limit,
        grid_prompts=2,
        judge=config.judge,
        device=config.device,
    )
    metrics = finished_eval(student_dir / "eval", eval_config) or run_eval(eval_config)
    return {
        "recipe": recipe.name,
        "what": recipe.what,
        "flags": recipe.flags,
        "train_steps": train_config.train_steps,
        "train_seconds": distill["train"]["seconds"],
        "student": str(student_dir),
        "steps": list(steps),
        "records": [record for record in metrics["records"] if record["model"] == "student"],
        "teacher_records": [record for record in metrics["records"] if record["model"] != "student"],
    }


def run(config: CompareConfig) -> dict:
    """Train and evaluate every recipe, write compare.json, compare.md and grid.png; returns the summary."""
    from student_train.compare.cost import cache_cost
    from student_train.compare.grid import GridRows
    from student_train.compare.report import best_per_steps, markdown_table
    from student_train.eval.grid import write_grid
    from student_train.eval.models import load_models
    from student_train.eval.sets import open_eval_sets
    from student_train.training.loop import open_store

    check_config(config)
    recipes = select_recipes(config.recipes)
    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)  # the process's setting: run() is the entry point
    reader = open_store(config.cache)
    _, eval_sets = open_eval_sets(config.cache, config.unseen_cache, config.limit)
    full_steps = int(reader.settings["num_inference_steps"])
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    results = [train_and_eval(config, recipe, full_steps) for recipe in recipes]

    # The grid (one model in memory at a time) and the cache's cost, timed on the teacher's denoiser.
    grid_set = eval_sets[-1]  # unseen prompts when there are, else val
    grid, rows, titles = None, [], []
    for result in results:
        distill = json.loads((Path(result["student"]) / "distill.json").read_text())
        models = load_models(result["student"], "", config.device, "auto", distill, reader, [])
        if grid is None:
            device = next(models.teacher.parameters()).device
            grid = GridRows(grid_set, reader.settings, config.steps, config.grid_prompts, device)
            rows.append(grid.teacher(models))
            titles.append("teacher, CFG (at S: the cache)")
            cost = cache_cost(reader, models.teacher, config.cache_seconds)
        rows.append(grid.student(models, tuple(result["steps"])))
        titles.append(result["recipe"])
    write_grid(out / "grid.png", rows, grid.column_titles, titles, scale=2)

    teacher_records = [record for result in results for record in result.pop("teacher_records")]
    names = [eval_set.name for eval_set in eval_sets]
    tables = {
        name: markdown_table(results, teacher_records, name, config.steps, full_steps) for name in names
    }
    total_train = sum(result["train_seconds"] for result in results)
    summary = {
        "config": dataclasses.asdict(config),
        "store": {"url": config.cache, "rows": len(reader), "steps": full_steps},
        "cache_cost": cost,
        "train_seconds_total": total_train,
        "best": {name: best_per_steps(results, name, [*config.steps, full_steps]) for name in names},
        "teacher_records": teacher_records,
        "students": results,
        "grid": {"prompts": grid.prompts, "set": grid_set.name},
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    markdown = "\n\n".join(tables.values())
    cost_line = cost_summary(cost, total_train, len(results))
    (out / "compare.md").write_text(f"{markdown}\n\n{cost_line}\n")
    print(markdown)
    print(cost_line)
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'} and {out / 'grid.png'}")
    return summary


def cost_summary(cost: dict, total_train: float, num_students: int) -> str:
    how = (
        "measured" if cost["measured_seconds"] is not None else "estimated from the teacher's denoiser passes"
    )
    return (
        f"cache: {cost['rows']} rows, {cost['teacher_passes']:,} teacher denoiser passes, "
        f"{cost['seconds']:.0f} s ({how}); {num_students} students trained from it in {total_train:.0f} s in all"
    )
