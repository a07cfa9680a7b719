"""The student folder (DESIGN.md), loadable with stock diffusers:

    STUDENT/
      unet/ or transformer/               full / pruned students: <denoiser class>.from_pretrained(STUDENT, subfolder=...)
      pytorch_lora_weights.safetensors    lora students ("unet." / "transformer." + peft keys): pipe.load_lora_weights(STUDENT)
      scheduler/scheduler_config.json     the scheduler to sample with (sampling/schedulers.py: LCM / FlowMatchLCM,
                                          TCD, DDIM, FlowMatchEuler, a flow DPM-Solver for reflow, the teacher's
                                          own for blockkd)
      distill.json                        method, teacher (source, revision, fingerprint), store, recommended
                                          steps / guidance / timesteps / schedule_kwargs (/ eta for tcd),
                                          settings, pruning (the block-removal record) and lineage (the --init chain)

    export_student(student, config, reader, out_dir, train_summary)   # weights in --save-dtype (fp32)
    model, distill = load_exported_student(out_dir)       # the student's denoiser alone, for eval
    model, distill = load_fused_student(out_dir)          # the same with a LoRA adapter merged (--init)
    pipe.scheduler = load_student_scheduler(out_dir)

A LoRA student's base is the teacher's denoiser, or, when it was trained with --init, the last
student of its lineage (`lineage[-1]["dir"]`, fused): `pipe.unet = load_fused_student(base)[0]`
before `pipe.load_lora_weights(STUDENT)`.

Samplers: `distill.json["sampling"]` gives the sampler (ddim | lcm | cfg | scheduler: the folder's own
scheduler) and the exact timesteps the student was trained at for 1, 2, 4 and 8 steps; a stock
pipeline of the teacher's class (SD, SDXL, SD3) reproduces the recommended ones with
`pipe(..., num_inference_steps=..., **distill["recommended"]["schedule_kwargs"])`: `timesteps=` for
DDPM schedulers that need them, `sigmas=` for flow ones, {} when the scheduler's own K steps are the
trained ones; for tcd also `eta=distill["recommended"]["eta"]`.
"""

import inspect
import json
from pathlib import Path

import diffusers
import torch

from shared.errors import DistillCacheError, first_line
from student_train.config import WEIGHT_DTYPES
from student_train.losses import w_range
from student_train.sampling import (
    SAMPLER_OF_METHOD,
    STUDENT_PREDICTION_TYPE,
    pipeline_timesteps,
    student_scheduler,
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
    w_min, w_max = w_range(config)
    return float(min(max(float(settings["guidance_scale"]) - 1.0, w_min), w_max))


def recommended_steps(config, settings: dict) -> int:
    """guidance: the teacher's own step count (one pass per step instead of two); else K."""
    return len(settings["timesteps"]) if config.method == "guidance" else config.num_student_steps


def json_timesteps(timesteps: list[float] | None) -> list[int | float] | None:
    if timesteps is None:
        return None
    return [int(t) if float(t).is_integer() else float(t) for t in timesteps]


def recommended_sampling(student, config, settings: dict) -> tuple[int, float, float | None]:
    """(num_inference_steps, pipeline guidance_scale, guidance w) a student is meant to sample with."""
    if SAMPLER_OF_METHOD[config.method] == "cfg":  # as the teacher: its steps, CFG at its scale
        return int(settings["num_inference_steps"]), float(settings["guidance_scale"]), None
    guidance_w = student.fixed_w
    if guidance_w is None:
        guidance_w = recommended_guidance_w(student.w_conditioned, config, settings)
    # the stock pipeline's scale: 1 = no CFG; a w-conditioned student gets w + 1 (embedded, one pass)
    return recommended_steps(config, settings), 1.0 if guidance_w is None else guidance_w + 1.0, guidance_w


def takes_eta(scheduler) -> bool:
    return "eta" in inspect.signature(scheduler.step).parameters


def distill_record(student, config, reader, train_summary: dict, scheduler) -> dict:
    """distill.json; `scheduler` is the exported one (it decides the recommended schedule_kwargs)."""
    settings = reader.settings
    num_steps, guidance_scale, guidance_w = recommended_sampling(student, config, settings)
    steps = {
        str(k): json_timesteps(pipeline_timesteps(config.method, k, settings))
        for k in sorted({*(k for k in EXPORTED_STEP_COUNTS if k <= len(settings["timesteps"])), num_steps})
    }
    # TCD's gamma, which stock pipelines pass to TCDScheduler.step as `eta` (a flow store's tcd student
    # samples with FlowMatchEulerDiscreteScheduler at gamma 0, and StableDiffusion3Pipeline takes no eta)
    eta = {"eta": config.tcd_gamma} if config.method == "tcd" and takes_eta(scheduler) else {}
    return {
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "student": config.student,
        "teacher": {
            "source": config.teacher or reader.teacher["source"],
            "revision": None if config.teacher else reader.teacher["revision"],
            "fingerprint": reader.fingerprint,
        },
        "store": {"url": config.cache, "fingerprint": reader.fingerprint},
        "denoiser": settings.get("denoiser", "unet"),
        "recommended": {
            "num_inference_steps": num_steps,
            "guidance_scale": guidance_scale,
            "timesteps": steps[str(num_steps)],  # the trained ones; None: the scheduler's own
            # what a stock pipeline needs besides num_inference_steps to step at those timesteps
            "schedule_kwargs": {}
            if steps[str(num_steps)] is None
            else trained_schedule_kwargs(scheduler, steps[str(num_steps)]),
            **eta,
        },
        "sampling": {
            "sampler": SAMPLER_OF_METHOD[config.method],
            "prediction_type": STUDENT_PREDICTION_TYPE.get(config.method, settings["prediction_type"]),
            "guidance_w": guidance_w,
            "timestep_scaling": config.timestep_scaling,
            "timesteps": steps,
        },
        "pruning": student.pruning,
        "lineage": student.lineage,
        "settings": config.to_json(),
        "train": train_summary,
    }


def export_student(student, config, reader, out_dir: str | Path, train_summary: dict) -> Path:
    """Write the student folder; returns its path. The weights are saved in `config.save_dtype`
    (float32 unless asked: training may have kept a LoRA base in bf16, the export is not affected)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap(student.model)
    save_dtype = WEIGHT_DTYPES[config.save_dtype]
    denoiser_name = reader.settings.get("denoiser", "unet")
    if student.kind == "lora":
        from peft.utils import get_peft_model_state_dict

        # peft keys (lora_A / lora_B), which diffusers' loaders read directly. Not
        # convert_state_dict_to_diffusers: it renames only the attention keys (to_q.lora.down ...), and
        # diffusers picks the format from the first key, so a UNet whose first adapted module is a conv
        # (no attention in down_blocks.0, as the embedded teacher) would reload without its attention LoRA.
        lora_layers = {name: value.to(save_dtype) for name, value in get_peft_model_state_dict(model).items()}
        pipeline_class = getattr(diffusers, reader.fingerprint["pipeline_class"], None)
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
        if model.dtype != save_dtype:
            model.to(save_dtype)  # training is over: cast in place
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
        lineage = distill.get("lineage") or []
        if lineage:  # trained with --init: the adapter sits on the previous student of the chain
            model, _ = load_fused_student(lineage[-1]["dir"], teacher)
        else:
            recorded = distill["teacher"]
            model = load_denoiser(
                teacher or recorded["source"],
                denoiser_name,
                None if teacher else recorded.get("revision"),
                expected_digest=recorded["fingerprint"]["denoiser_hash"],
            )
        try:
            model.load_lora_adapter(str(student_dir), prefix=denoiser_name, weight_name=LORA_WEIGHT_NAME)
        except Exception as error:  # a damaged or foreign adapter file: the student is at fault
            raise DistillCacheError(
                f"cannot load the student's LoRA adapter {student_dir / LORA_WEIGHT_NAME} ({first_line(error)})"
            ) from None
    else:
        model = load_denoiser(str(student_dir), denoiser_name, what="student's denoiser")
    return model.eval().requires_grad_(False), distill


def load_fused_student(student_dir: str | Path, teacher: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The student's denoiser with a LoRA adapter merged into its weights (diffusers' `fuse_lora`, then
    the adapter layers removed): a plain model of the base's architecture, what --init starts from."""
    model, distill = load_exported_student(student_dir, teacher)
    if distill["student"] == "lora":
        model.fuse_lora()
        model.unload_lora()
    return model, distill
