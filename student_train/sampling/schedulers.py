"""The diffusers scheduler a student samples with, and loading it back from a student folder.

scheduler = student_scheduler("lcm", settings["scheduler"], num_grid_steps=50)   # what export writes
pipe.scheduler = load_student_scheduler(student_dir)                              # DIR/scheduler
"""

import json
from pathlib import Path

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
)


def student_scheduler(
    method: str, scheduler_settings: dict, num_grid_steps: int, timestep_scaling: float = 10.0
):
    """The diffusers scheduler a student of `method` samples with, on the teacher's noise schedule."""
    config = {k: v for k, v in scheduler_settings["config"].items() if not k.startswith("_")}
    if scheduler_settings["class"].startswith("FlowMatch"):
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    if method == "lcm":
        return LCMScheduler.from_config(
            config, original_inference_steps=num_grid_steps, timestep_scaling=timestep_scaling
        )
    if method == "tcd":  # custom timesteps on the cached grid; eta (gamma) is a pipeline argument
        return TCDScheduler.from_config(config, original_inference_steps=num_grid_steps)
    if method == "direct":  # trailing: the first step starts at t = T - 1, from pure noise
        return DDIMScheduler.from_config(config, timestep_spacing="trailing")
    if method == "blockkd":  # the teacher's own scheduler: the student replaces only its denoiser
        return getattr(diffusers, scheduler_settings["class"]).from_config(config)
    if method == "reflow":  # a flow student on a DDPM teacher's pipeline: first-order DPM-Solver with
        # flow sigmas is Euler on x_s = (1 - s) x0 + s noise, with init_noise_sigma = 1 and
        # scale_model_input = identity, which StableDiffusionPipeline calls (FlowMatch* have neither)
        return DPMSolverMultistepScheduler(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            use_flow_sigmas=True,
            flow_shift=1.0,
            prediction_type="flow_prediction",
            solver_order=1,
            final_sigmas_type="zero",
            steps_offset=1,  # unused by flow sigmas; what StableDiffusionPipeline checks for
        )
    return EulerDiscreteScheduler.from_config(
        config
    )  # progressive, guidance: custom timesteps on the cached grid


def load_student_scheduler(student_dir: str | Path):
    config = json.loads((Path(student_dir) / "scheduler" / "scheduler_config.json").read_text())
    return getattr(diffusers, config["_class_name"]).from_pretrained(student_dir, subfolder="scheduler")
