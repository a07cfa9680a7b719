"""Measure an embedded teacher: the few-step gap that distillation must close.

    python -m teacher_cache.embedded.teacher_table [--teacher DIR] [--n-prompts 280] [--out-dir docs]
    python -m teacher_cache.embedded.teacher_table --teacher teacher_cache/embedded/flow_teacher --prefix flow_teacher

Samples one image per prompt (`--n-prompts` of the 560 digit x colour combinations, spread evenly;
image i uses seed i) at the reference step count for several guidance scales (1.0 = no CFG), then
at 1, 2, 4 and 8 steps with the best guidance, and judges each set: prompt adherence (digit and
both colours right), per-attribute accuracy, and the Frechet distance of judge features to
held-out real digits. The default teacher (DDPM family) samples with DDIM, 50 reference steps, the
few-step rows with its "leading" timestep spacing, then with "trailing"; the flow teacher with its
own FlowMatchEulerDiscreteScheduler (shift included), 28 reference steps (SD3's default), one
few-step series. Prints a markdown table and writes it to OUT_DIR/PREFIX_table.md, the grid (rows:
prompts, columns: step counts) to OUT_DIR/PREFIX_grid.png, and the numbers plus the chosen
guidance to TEACHER/teacher_eval.json.
"""

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from PIL import Image, ImageDraw

from shared.digits import all_prompts, make_images
from shared.judge import load_judge
from shared.teacher import load_teacher as load_pipeline
from shared.teacher import portable_path
from teacher_cache.embedded import DEFAULT_TEACHER_DIR

GUIDANCE_SWEEP = (1.0, 2.5, 5.0, 7.5)
FEW_STEPS = (1, 2, 4, 8)
REFERENCE_STEPS = {"ddpm": 50, "flow": 28}  # DDIM's customary 50; StableDiffusion3Pipeline's default 28
SPACINGS = {"ddpm": ("leading", "trailing"), "flow": ("flow",)}
GRID_PROMPTS = (
    "a red seven on blue",
    "a yellow three on black",
    "a white zero on magenta",
    "a green four on white",
    "a cyan eight on red",
    "a blue two on yellow",
    "a magenta nine on green",
    "a black five on cyan",
)


@dataclass(frozen=True)
class TableSettings:
    teacher: str = str(DEFAULT_TEACHER_DIR)
    n_prompts: int = 280  # every other combination: all digits and colours, half the CPU time
    batch_size: int = 140
    out_dir: str = "docs"
    prefix: str = "teacher"  # OUT_DIR/PREFIX_table.md, OUT_DIR/PREFIX_grid.png
    threads: int = 1
    device: str = "cuda" if torch.cuda.is_available() else "cpu"


def schedule_family(pipe: DiffusionPipeline) -> str:
    return "flow" if type(pipe.scheduler).__name__.startswith("FlowMatch") else "ddpm"


def load_teacher(path: str, device: str) -> DiffusionPipeline:
    """The teacher pipeline; a DDPM-family one samples with DDIM, a flow one with its own scheduler."""
    pipe = load_pipeline(path, None, torch.device(device), torch.float32).pipe
    if schedule_family(pipe) == "ddpm":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe


def use_spacing(pipe: DiffusionPipeline, spacing: str) -> None:
    """DDIM with "leading" spacing (Stable Diffusion's config: 1 step evaluates t=1) or "trailing" (Lin et
    al., "Common Diffusion Noise Schedules and Sample Steps are Flawed": 1 step evaluates t=999); a flow
    scheduler ("flow") always starts at sigma = 1 and is kept as it is."""
    if spacing != "flow":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)


def sample_images(
    pipe: DiffusionPipeline,
    prompts: list[str],
    steps: int,
    guidance: float,
    batch_size: int,
    first_seed: int = 0,
) -> np.ndarray:
    """uint8 images [N, H, W, 3]; image i uses its own generator seeded first_seed + i (batch-independent)."""
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generators = [torch.Generator().manual_seed(first_seed + start + i) for i in range(len(batch))]
        images = pipe(
            batch, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np"
        ).images  # [B, H, W, 3] float in [0, 1]
        chunks.append(np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8))
    return np.concatenate(chunks)


def judge_row(
    judge, images: np.ndarray, prompts: list[str], steps: int, guidance: float, spacing: str
) -> dict:
    accuracy = judge.attribute_accuracy(images, prompts)
    return {
        "steps": steps,
        "spacing": spacing,
        "guidance": guidance,
        "adherence": round(float(accuracy["all"]), 4),
        "digit": round(float(accuracy["digit"]), 4),
        "fg": round(float(accuracy["fg"]), 4),
        "bg": round(float(accuracy["bg"]), 4),
        "fd": round(judge.fd_to_real(images), 2),
    }


def markdown_table(rows: list[dict], real_row: dict) -> str:
    lines = [
        "| steps | spacing | guidance | adherence | digit | fg | bg | FD to real |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [*rows, real_row]:
        steps = "real held-out" if row is real_row else row["steps"]
        guidance = (
            "-" if row is real_row else ("1 (no CFG)" if row["guidance"] == 1.0 else f"{row['guidance']:g}")
        )
        lines.append(
            f"| {steps} | {row['spacing']} | {guidance} | {row['adherence']:.1%} | {row['digit']:.1%} | {row['fg']:.1%} "
            f"| {row['bg']:.1%} | {row['fd']:.2f} |"
        )
    return "\n".join(lines)


def save_grid(
    columns: list[tuple[str, np.ndarray]], prompts: tuple[str, ...], path: Path, scale: int = 3
) -> None:
    """Rows: prompts; columns: (label, images uint8 [R, H, W, 3]) pairs."""
    tile = columns[0][1].shape[1] * scale
    label_width, header = 150, 18
    grid = Image.new("RGB", (label_width + tile * len(columns), header + tile * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (label, images) in enumerate(columns):
        draw.text((label_width + c * tile + 4, 3), label, fill="black")
        for r, image in enumerate(images):
            tile_image = Image.fromarray(image).resize((tile, tile), Image.NEAREST)
            grid.paste(tile_image, (label_width + c * tile, header + r * tile))
    for r, prompt in enumerate(prompts):
        draw.text((4, header + r * tile + tile // 2 - 6), prompt, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def run(settings: TableSettings) -> list[dict]:
    torch.set_num_threads(settings.threads)
    pipe = load_teacher(settings.teacher, settings.device)
    family = schedule_family(pipe)
    reference_steps, spacings = REFERENCE_STEPS[family], SPACINGS[family]
    judge = load_judge(settings.device)
    every = all_prompts()
    prompts = [
        every[i * len(every) // settings.n_prompts] for i in range(min(settings.n_prompts, len(every)))
    ]
    rows, started = [], time.time()

    def measure(steps: int, guidance: float, spacing: str = spacings[0]) -> dict:
        use_spacing(pipe, spacing)
        images = sample_images(pipe, prompts, steps, guidance, settings.batch_size)
        rows.append(judge_row(judge, images, prompts, steps, guidance, spacing))
        print(f"  {rows[-1]}  ({time.time() - started:.0f}s)", flush=True)
        return rows[-1]

    # 50 steps: the guidance sweep picks the best scale (adherence first, then FD).
    sweep = [measure(reference_steps, guidance) for guidance in GUIDANCE_SWEEP]
    best = max((r for r in sweep if r["guidance"] != 1.0), key=lambda r: (r["adherence"], -r["fd"]))[
        "guidance"
    ]
    for spacing in spacings:
        for steps in FEW_STEPS:
            measure(steps, best, spacing)
    use_spacing(pipe, spacings[0])  # the teacher's own scheduler config, for the grid

    real, real_prompts = make_images(len(prompts), seed=1, split="heldout", prompts=prompts)
    real_row = judge_row(judge, real, real_prompts, 0, 0.0, "-")
    table = markdown_table(rows, real_row)
    print(table)

    # Grid: a few prompts at every few-step count with the best guidance, then 50 steps with and without CFG.
    columns = [
        (
            f"{steps} step{'s' * (steps > 1)}",
            sample_images(pipe, list(GRID_PROMPTS), steps, best, len(GRID_PROMPTS)),
        )
        for steps in (*FEW_STEPS, reference_steps)
    ]
    columns.append(
        (
            f"{reference_steps}, no CFG",
            sample_images(pipe, list(GRID_PROMPTS), reference_steps, 1.0, len(GRID_PROMPTS)),
        )
    )
    out_dir = Path(settings.out_dir)
    save_grid(columns, GRID_PROMPTS, out_dir / f"{settings.prefix}_grid.png")
    (out_dir / f"{settings.prefix}_table.md").write_text(table + "\n")
    record = {
        "recommended_guidance_scale": best,
        "reference_steps": reference_steps,
        "rows": rows,
        "real": real_row,
        "settings": asdict(settings)
        | {"teacher": portable_path(settings.teacher), "out_dir": portable_path(settings.out_dir)},
    }
    (Path(settings.teacher) / "teacher_eval.json").write_text(json.dumps(record, indent=2) + "\n")
    return rows


def parse_settings(argv: list[str] | None = None) -> TableSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(TableSettings()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    return TableSettings(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    run(parse_settings())
