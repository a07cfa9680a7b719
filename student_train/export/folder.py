"""The student folder (DESIGN.md), loadable with stock diffusers:

    STUDENT/
      unet/ or transformer/               full students: <denoiser class>.from_pretrained(STUDENT, subfolder=...)
      pytorch_lora_weights.safetensors    lora students ("unet." / "transformer." + peft keys): pipe.load_lora_weights(STUDENT)
      scheduler/scheduler_config.json     the few-step scheduler (sampling/schedulers.py: LCMScheduler or
                                          FlowMatchLCMScheduler for lcm, DDIM / Euler / FlowMatchEuler otherwise)
      distill.json                        method, teacher, store, recommended steps / guidance / timesteps, settings

    export_student(student, config, reader, out_dir, train_summary)
    model, distill = load_exported_student(out_dir)       # the student's denoiser alone, for eval
    pipe.scheduler = load_student_scheduler(out_dir)

Samplers: `distill.json["sampling"]` gives the sampler (ddim | lcm) and the exact timesteps the
student was trained at for 1, 2, 4 and 8 steps; a stock pipeline of the teacher's class (SD, SDXL,
SD3) reproduces the recommended ones with
`pipe(..., num_inference_steps=..., **distill["recommended"]["schedule_kwargs"])`: `timesteps=` for
DDPM schedulers that need them, `sigmas=` for flow ones, {} when the scheduler's own K steps are the
trained ones.
"""

import json
from pathlib import Path

import diffusers
import torch

from student_train.sampling import (
    SAMPLER_OF_METHOD,
    student_scheduler,
    student_timesteps,
    trained_schedule_kwargs,
)
from student_train.students.denoiser import load_denoiser, unwrap

FORMAT_VERSION = 1
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EXPORTED_STEP_COUNTS = (1, 2, 4, 8)


def recommended_guidance_w(student_w_conditioned: bool, config, settings: dict) -> float | None:
    """w for a w-conditioned student: the store's guidance (Imagen convention), within [w_min, w_max]."""
    if not student_w_conditioned:
        return None
    return float(min(max(float(settings["guidance_scale"]) - 1.0, config.w_min), config.w_max))


def json_timesteps(timesteps: list[float]) -> list[int | float]:
    return [int(t) if float(t).is_integer() else float(t) for t in timesteps]


def distill_record(student, config, reader, train_summary: dict, scheduler) -> dict:
    """distill.json; `scheduler` is the exported one (it decides the recommended schedule_kwargs)."""
    settings = reader.settings
    guidance_w = recommended_guidance_w(student.w_conditioned, config, settings)
    steps = {
        str(k): json_timesteps(student_timesteps(config.method, k, settings)) for k in EXPORTED_STEP_COUNTS
    }
    recommended_timesteps = student_timesteps(config.method, config.num_student_steps, settings)
    return {
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "student": config.student,
        "teacher": {
            "source": config.teacher or reader.fingerprint.get("source"),
            "fingerprint": reader.fingerprint,
        },
        "store": {"url": config.cache, "fingerprint": reader.fingerprint},
        "denoiser": settings.get("denoiser", "unet"),
        "recommended": {
            "num_inference_steps": config.num_student_steps,
            # the stock pipeline's scale: 1 = no CFG; a w-conditioned student gets w + 1 (embedded, one pass)
            "guidance_scale": 1.0 if guidance_w is None else guidance_w + 1.0,
            "timesteps": json_timesteps(recommended_timesteps),
            # what a stock pipeline needs besides num_inference_steps to step at those timesteps
            "schedule_kwargs": trained_schedule_kwargs(scheduler, recommended_timesteps),
        },
        "sampling": {
            "sampler": SAMPLER_OF_METHOD[config.method],
            "prediction_type": settings["prediction_type"],
            "guidance_w": guidance_w,
            "timestep_scaling": config.timestep_scaling,
            "timesteps": steps,
        },
        "settings": config.to_json(),
        "train": train_summary,
    }


def export_student(student, config, reader, out_dir: str | Path, train_summary: dict) -> Path:
    """Write the student folder; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap(student.model)
    denoiser_name = reader.settings.get("denoiser", "unet")
    if student.kind == "lora":
        from peft.utils import get_peft_model_state_dict

        # peft keys (lora_A / lora_B), which diffusers' loaders read directly. Not
        # convert_state_dict_to_diffusers: it renames only the attention keys (to_q.lora.down ...), and
        # diffusers picks the format from the first key, so a UNet whose first adapted module is a conv
        # (no attention in down_blocks.0, as the embedded teacher) would reload without its attention LoRA.
        lora_layers = get_peft_model_state_dict(model)
        pipeline_class = getattr(diffusers, reader.fingerprint.get("pipeline_class", ""), None)
        if not hasattr(pipeline_class, "save_lora_weights"):
            pipeline_class = diffusers.StableDiffusionPipeline
        adapter_config = model.peft_config["default"].to_dict()  # keeps lora_alpha != r on reload
        pipeline_class.save_lora_weights(
            out_dir,
            **{
                f"{denoiser_name}_lora_layers": lora_layers,
                f"{denoiser_name}_lora_adapter_metadata": adapter_config,
            },
            weight_name=LORA_WEIGHT_NAME,
        )
    else:
        model.save_pretrained(out_dir / denoiser_name)
    scheduler = student_scheduler(
        config.method,
        reader.settings["scheduler"],
        len(reader.settings["timesteps"]),
        config.timestep_scaling,
    )
    scheduler.save_pretrained(out_dir / "scheduler")
    record = distill_record(student, config, reader, train_summary, scheduler)
    (out_dir / "distill.json").write_text(json.dumps(record, indent=2))
    return out_dir


def load_exported_student(
    student_dir: str | Path, teacher: str | None = None
) -> tuple[torch.nn.Module, dict]:
    """The student's denoiser (eval mode) and its distill.json, without text encoder or VAE.
    A LoRA student is its teacher's denoiser (`teacher` or distill.json's source) plus the adapter."""
    student_dir = Path(student_dir)
    distill = json.loads((student_dir / "distill.json").read_text())
    denoiser_name = distill.get("denoiser", "unet")
    if distill["student"] == "lora":
        model = load_denoiser(teacher or distill["teacher"]["source"], denoiser_name)
        model.load_lora_adapter(str(student_dir), prefix=denoiser_name, weight_name=LORA_WEIGHT_NAME)
    else:
        model = load_denoiser(str(student_dir), denoiser_name)
    return model.eval().requires_grad_(False), distill
