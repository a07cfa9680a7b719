"""`student-train sample`: one image from a student folder, with stock diffusers only.

    student-train sample --student runs/student --prompt "a red seven on blue" --steps 4 --out seven.png

The teacher pipeline named in distill.json supplies the text encoder, tokenizer and VAE; the
student replaces its denoiser (`unet/` or `transformer/` of a full or pruned student:
`from_pretrained(DIR, subfolder=...)`) or adds its adapter (`pipe.load_lora_weights(DIR)`, onto the
previous student of its --init chain if it has one), and `DIR/scheduler` replaces the scheduler,
stepped at the timesteps the student was trained at. Works for every family phase one captures
(SD, SDXL, SD3).
The initial noise is made from --seed exactly as phase one makes a row's noise, so `--seed S`
gives the student's image for the store rows of seed S.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from shared.config_flags import add_config_flags, config_from_args, option
from shared.errors import DistillCacheError, first_line

HELP = "generate one image with a student folder (stock diffusers pipeline + the student)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class SampleConfig:
    """Settings of one `student-train sample`; CLI flags map 1:1 onto the fields."""

    student: str = option(None, "the student folder (student-train run --out)", required=True)
    prompt: str = option(None, "the text to draw", required=True)
    out: str = option(None, "the image file to write (.png, .jpg, .webp)", required=True)
    steps: int = option(0, "sampling steps; 0 = the student's recommended count")
    guidance: float | None = option(
        None, "pipeline guidance_scale", default_text="the one distill.json recommends"
    )
    seed: int = option(0, "noise seed, as the store's rows")
    teacher: str = option("", "the teacher pipeline", default_text="the one distill.json names")
    device: str = option("auto", "auto = cuda if available, else cpu")
    dtype: str = option("auto", "auto = float16 on cuda, float32 on cpu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, SampleConfig)


def main(args: argparse.Namespace) -> int:
    run(config_from_args(SampleConfig, args))
    return 0


def read_student_folder(config: SampleConfig) -> dict:
    """distill.json of a complete student folder; raises DistillCacheError naming what is missing."""
    from student_train.export import LORA_WEIGHT_NAME

    folder = Path(config.student)
    if not (folder / "distill.json").is_file():
        raise DistillCacheError(
            f"--student {folder} has no distill.json; give a folder from student-train run"
        )
    distill = json.loads((folder / "distill.json").read_text())
    denoiser_name = distill.get("denoiser", "unet")
    if not (folder / denoiser_name).is_dir() and not (folder / LORA_WEIGHT_NAME).is_file():
        raise DistillCacheError(f"--student {folder} has neither {denoiser_name}/ nor {LORA_WEIGHT_NAME}")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise DistillCacheError(f"--student {folder} has no scheduler/scheduler_config.json")
    return distill


def check_config(config: SampleConfig) -> None:
    if not config.prompt.strip():
        raise DistillCacheError("--prompt is empty; give the text to draw")
    if config.steps < 0:
        raise DistillCacheError(f"--steps must be >= 1 (or 0 for the recommended count), not {config.steps}")
    if Path(config.out).suffix.lower() not in IMAGE_SUFFIXES:
        raise DistillCacheError(
            f"--out {config.out}: name an image file ending in {', '.join(IMAGE_SUFFIXES)}"
        )
    if Path(config.out).is_dir():
        raise DistillCacheError(f"--out {config.out} is a folder; name an image file")


def schedule_kwargs(pipe, distill: dict, steps: int) -> dict:
    """`timesteps=` or `sigmas=` (flow pipelines) that make the pipeline step at exactly the timesteps the
    student was trained at for `steps`, when its scheduler would not by itself; {} otherwise."""
    from student_train.sampling import trained_schedule_kwargs

    trained = distill.get("sampling", {}).get("timesteps", {}).get(str(steps))
    return {} if trained is None else trained_schedule_kwargs(pipe.scheduler, trained)


def student_pipeline(config: SampleConfig, distill: dict):
    """The teacher pipeline with the student's denoiser (or adapter) and scheduler, on the device."""
    from shared.teacher import load_teacher, resolve_dtype
    from student_train.eval.devices import place, resolve_device
    from student_train.sampling import load_student_scheduler
    from student_train.students.denoiser import load_denoiser

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    recorded = distill.get("teacher", {})
    source = config.teacher or recorded.get("source")
    teacher = load_teacher(source, None if config.teacher else recorded.get("revision"), device, dtype)
    expected = recorded.get("fingerprint", {}).get("denoiser_hash")
    if teacher.fingerprint["denoiser_hash"] != expected:
        raise DistillCacheError(
            f"the teacher at {source} is not the one the student was distilled from (its denoiser's digest "
            "differs from distill.json's); pass --teacher with the student's own teacher"
        )
    pipe, denoiser_name = teacher.pipe, teacher.denoiser_name
    if (Path(config.student) / denoiser_name).is_dir():
        student = load_denoiser(config.student, denoiser_name, what="student's denoiser")
        setattr(pipe, denoiser_name, place(student, device, dtype))
    else:
        lineage = distill.get("lineage") or []
        if lineage:  # a LoRA trained with --init sits on the previous student of its chain
            from student_train.export import load_fused_student

            base, _ = load_fused_student(lineage[-1]["dir"], config.teacher or None)
            setattr(pipe, denoiser_name, place(base, device, dtype))
        try:
            pipe.load_lora_weights(config.student)
        except Exception as error:  # a damaged or foreign adapter: the student is at fault, not the teacher
            raise DistillCacheError(
                f"cannot load the student's LoRA adapter from {config.student} ({first_line(error)})"
            ) from None
    pipe.scheduler = load_student_scheduler(config.student)
    return pipe, device, dtype


def run(config: SampleConfig) -> Path:
    """Write one image; returns its path."""
    from shared.noise import initial_noise

    check_config(config)
    distill = read_student_folder(config)
    pipe, device, dtype = student_pipeline(config, distill)
    recommended = distill.get("recommended", {})
    steps = config.steps or int(recommended.get("num_inference_steps", 4))
    guidance = (
        config.guidance if config.guidance is not None else float(recommended.get("guidance_scale", 1.0))
    )
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    size = denoiser.config.sample_size  # latent height = width
    noise = initial_noise(
        [config.seed], (denoiser.config.in_channels, size, size), device, dtype
    )  # [1, C, h, w]
    eta = {"eta": recommended["eta"]} if "eta" in recommended else {}  # tcd: TCDScheduler's gamma
    import torch

    image = pipe(
        config.prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise,
        generator=torch.Generator("cpu").manual_seed(config.seed),  # the noise LCM / TCD steps add
        **eta,
        **schedule_kwargs(pipe, distill, steps),
    ).images[0]
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out} ({steps} steps, guidance {guidance:g}, seed {config.seed})")
    return out
