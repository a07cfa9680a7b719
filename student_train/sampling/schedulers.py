"""The diffusers scheduler a student samples with, loading it back, and the pipeline arguments that
make a stock pipeline sample at exactly the timesteps the student was trained at.

scheduler = student_scheduler("lcm", settings["scheduler"], num_grid_steps=50)   # what export writes
pipe.scheduler = load_student_scheduler(student_dir)                              # DIR/scheduler
pipe(prompt, num_inference_steps=K, **trained_schedule_kwargs(pipe.scheduler, trained_timesteps))

DDPM family: direct samples with DDIM ("trailing": its first step starts at t = T - 1), lcm with
LCMScheduler, tcd with TCDScheduler (its gamma is the pipeline's `eta`), progressive and guidance with
DDIM at custom timesteps on the cached grid: diffusers' DDIMScheduler takes no custom timesteps, so it
is DPMSolverMultistepScheduler at order 1 (dpmsolver++ of order 1 is the DDIM step) with DDIM's last
step (to alphas_cumprod[0], or to alpha = 1 with set_alpha_to_one). reflow: a flow student on the
teacher's pipeline (first-order DPM-Solver with flow sigmas). blockkd: the teacher's own scheduler.

Flow family (FlowMatch* teachers, e.g. SD3): direct samples with the teacher's own
FlowMatchEulerDiscreteScheduler (its shift included: K steps give the trained timesteps); lcm with
diffusers' FlowMatchLCMScheduler, progressive and guidance with FlowMatchEulerDiscreteScheduler, at the
cached grid's sigmas, which are already shifted: these two are exported with shift = 1 so that
custom sigmas pass through unchanged (sigma = t / 1000), and the SD3 pipeline takes them as `sigmas=`.
"""

import inspect
import json
from pathlib import Path

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchLCMScheduler,
    LCMScheduler,
    TCDScheduler,
)


def is_flow_scheduler(class_name: str) -> bool:
    return class_name.startswith("FlowMatch")


def student_scheduler(
    method: str, scheduler_settings: dict, num_grid_steps: int, timestep_scaling: float = 10.0
):
    """The diffusers scheduler a student of `method` samples with, on the teacher's noise schedule."""
    config = {k: v for k, v in scheduler_settings["config"].items() if not k.startswith("_")}
    if method == "blockkd":  # the teacher's own scheduler: the student replaces only its denoiser
        return getattr(diffusers, scheduler_settings["class"]).from_config(config)
    if is_flow_scheduler(scheduler_settings["class"]):
        if method in ("direct", "reflow"):  # the teacher's own schedule, shift included
            return FlowMatchEulerDiscreteScheduler.from_config(config)
        unshifted = {**config, "shift": 1.0, "use_dynamic_shifting": False}  # custom sigmas kept as given
        if method == "lcm":
            return FlowMatchLCMScheduler.from_config(accepted_by(FlowMatchLCMScheduler, unshifted))
        return FlowMatchEulerDiscreteScheduler.from_config(unshifted)  # progressive, guidance
    if method == "lcm":
        return LCMScheduler.from_config(
            config, original_inference_steps=num_grid_steps, timestep_scaling=timestep_scaling
        )
    if method == "tcd":  # custom timesteps on the cached grid; eta (gamma) is a pipeline argument
        return TCDScheduler.from_config(config, original_inference_steps=num_grid_steps)
    if method == "direct":  # trailing: the first step starts at t = T - 1, from pure noise
        return DDIMScheduler.from_config(config, timestep_spacing="trailing")
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
    return ddim_with_custom_timesteps(config)  # progressive, guidance: custom timesteps on the cached grid


def ddim_with_custom_timesteps(ddim_config: dict) -> DPMSolverMultistepScheduler:
    """DDIM's deterministic step, final alpha included, in a scheduler that takes custom timesteps."""
    final = "zero" if ddim_config.get("set_alpha_to_one", True) else "sigma_min"
    return DPMSolverMultistepScheduler.from_config(
        accepted_by(DPMSolverMultistepScheduler, ddim_config),
        solver_order=1,
        algorithm_type="dpmsolver++",
        final_sigmas_type=final,
        use_karras_sigmas=False,
        thresholding=False,
    )


def accepted_by(scheduler_class, config: dict) -> dict:
    """The entries of another scheduler's config that `scheduler_class` takes (no unknown-key warnings)."""
    parameters = inspect.signature(scheduler_class.__init__).parameters
    return {key: value for key, value in config.items() if key in parameters}


def load_student_scheduler(student_dir: str | Path):
    config = json.loads((Path(student_dir) / "scheduler" / "scheduler_config.json").read_text())
    return getattr(diffusers, config["_class_name"]).from_pretrained(student_dir, subfolder="scheduler")


def trained_schedule_kwargs(scheduler, timesteps: list[float]) -> dict:
    """What to pass to a stock pipeline besides num_inference_steps = len(timesteps) so that `scheduler`
    steps at `timesteps`: nothing when it already does, else `sigmas` (flow schedulers: t / 1000, as the
    SD3 pipeline takes them) or `timesteps` (schedulers that accept custom timesteps)."""
    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(len(timesteps))
    if [float(t) for t in probe.timesteps] == [float(t) for t in timesteps]:
        return {}
    if is_flow_scheduler(type(scheduler).__name__):
        return {"sigmas": [float(t) / scheduler.config.num_train_timesteps for t in timesteps]}
    if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
        return {"timesteps": list(timesteps)}
    return {}
