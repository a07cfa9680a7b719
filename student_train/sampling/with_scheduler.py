"""Sampling with a diffusers scheduler, as the stock pipelines loop over it (`init_noise_sigma`,
`scale_model_input`, `step` with the `eta` / `generator` it accepts), but with a denoise function
in place of the pipeline's UNet call: what a student folder gives in a stock pipeline, without text
encoder or VAE. Eval's teacher@K (a CFG denoise) and the students whose exported scheduler is their
sampler (guidance, tcd, reflow) go through it.

    scheduler = load_student_scheduler(student_dir)
    latents = sample_with_scheduler(denoise, scheduler, noise, cond, num_steps=4,
                                    timesteps=None, guidance_w=None, eta=0.3, generator=generators)

`generator` may be one torch.Generator per sample (a list), as diffusers' `randn_tensor` takes it:
`SampleRandom(...).generators` then gives the same noise as our own samplers draw.
"""

import inspect

import torch

from shared.noise import init_noise_sigma
from student_train.sampling.sampler import Denoise
from student_train.sampling.schedulers import trained_schedule_kwargs


def step_kwargs(scheduler, eta: float, generator) -> dict:
    """The extra `step` kwargs a diffusers pipeline passes (`prepare_extra_step_kwargs`): eta and
    generator, where the scheduler's `step` takes them."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    extra = {"eta": eta} if "eta" in accepted else {}
    return {**extra, "generator": generator} if "generator" in accepted else extra


@torch.no_grad()
def sample_with_scheduler(
    denoise: Denoise,
    scheduler,
    noise: torch.Tensor,
    cond: dict,
    num_steps: int,
    timesteps: list[float] | None = None,
    guidance_w: torch.Tensor | None = None,
    eta: float = 0.0,
    generator=None,
) -> torch.Tensor:
    """K-step sampling from unit-variance noise (B, C, H, W) -> float32 latents (B, C, H, W).

    `timesteps`: the trained timesteps, passed as a stock pipeline would (`trained_schedule_kwargs`:
    custom timesteps, or sigmas for flow schedulers) when the scheduler's own K differ; `eta`: the pipelines' `eta` (TCD's gamma; DDIM's eta); `guidance_w` (B,): a w-conditioned
    student's embedding input (Imagen w = pipeline scale - 1).
    """
    custom = {} if timesteps is None else trained_schedule_kwargs(scheduler, timesteps)
    if "timesteps" in custom:
        scheduler.set_timesteps(timesteps=[int(t) for t in custom["timesteps"]], device=noise.device)
    elif "sigmas" in custom:  # flow schedulers, as the SD3 pipeline passes them
        scheduler.set_timesteps(sigmas=custom["sigmas"], device=noise.device)
    else:
        scheduler.set_timesteps(num_steps, device=noise.device)
    extra = step_kwargs(scheduler, eta, generator)
    latents = noise.float() * init_noise_sigma(scheduler)  # (B, C, H, W); 1 for flow schedulers
    for t in scheduler.timesteps:
        # flow schedulers have no scale_model_input (identity)
        model_input = (
            scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        )
        output = denoise(model_input, t.expand(latents.shape[0]), cond, guidance_w).float()
        latents = scheduler.step(output, t, latents, **extra, return_dict=False)[0]
    return latents
