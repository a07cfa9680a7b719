"""Few-step sampling of a student from cached noise and cached conditioning (no text encoder, no VAE).

One home for both uses: differentiable for `direct` training (gradients through every step, with an
optional per-step activation checkpoint), under `torch.no_grad()` for eval.

    timesteps = student_timesteps("lcm", 4, settings)               # the timesteps the method trains at
    latents = sample(student.denoise, schedule, noise, cond, timesteps, "epsilon", sampler="lcm",
                     random=SampleRandom(seed, 0, sample_ids))     # (B, C, H, W)

Samplers (`SAMPLERS`):
  ddim  deterministic DDIM (Song et al. 2021): x_s = alpha_s x0_hat + sigma_s eps_hat; the last step
        goes to the schedule's end (final alpha), exactly as diffusers' DDIMScheduler.step.
  lcm   multistep consistency sampling (Luo et al. 2023), as diffusers' LCMScheduler.step: f(x_t, t),
        then fresh noise to the next timestep; the last step returns f(x_t, t).
Timesteps per method (`student_timesteps`):
  direct       diffusers' DDIMScheduler on the teacher's schedule, "trailing" spacing (starts at t = T-1)
  lcm          every (S / K)-th point of the cached S-step grid, LCMScheduler's index rule
  progressive  every 2^R-th point of the cached grid, R = the last round (see losses/progressive.py)
"""

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from shared.schedule import NoiseSchedule
from student_train.consistency import consistency_output
from student_train.randomness import SampleRandom

Denoise = Callable[
    ..., torch.Tensor
]  # (x_t (B,C,H,W), timesteps (B,), cond, guidance_w (B,) | None) -> output

SAMPLER_OF_METHOD = {"direct": "ddim", "lcm": "lcm", "progressive": "ddim"}


def cached_grid(settings: dict, schedule: NoiseSchedule) -> list[float]:
    """The teacher's S timesteps plus the end point: grid[i] is the time of trajectory point i."""
    return [float(t) for t in settings["timesteps"]] + [schedule.end_timestep]


def progressive_jump(num_grid_steps: int, num_student_steps: int) -> int:
    """Grid steps per student step after the last round: the smallest 2^R with ceil(S / 2^R) <= K."""
    rounds = max(0, math.ceil(math.log2(num_grid_steps / num_student_steps)))
    return 2**rounds


def student_timesteps(method: str, num_steps: int, settings: dict) -> list[float]:
    """The K timesteps a student of `method` samples at (the ones it was trained at)."""
    scheduler = settings["scheduler"]
    num_grid_steps = len(settings["timesteps"])
    if method == "direct":
        from student_train.export import student_scheduler

        few_step = student_scheduler("direct", scheduler, num_grid_steps)
        few_step.set_timesteps(num_steps)
        return [float(t) for t in few_step.timesteps]
    if method == "lcm":
        indices = np.floor(np.linspace(0, num_grid_steps, num_steps, endpoint=False)).astype(int)
    elif method == "progressive":
        indices = np.arange(0, num_grid_steps, progressive_jump(num_grid_steps, num_steps))
    else:
        raise ValueError(f"no sampling timesteps for method {method!r}")
    return [float(settings["timesteps"][i]) for i in indices]


def sample(
    denoise: Denoise,
    schedule: NoiseSchedule,
    noise: torch.Tensor,
    cond: dict,
    timesteps: list[float],
    prediction_type: str,
    sampler: str = "ddim",
    random: SampleRandom | None = None,
    guidance_w: torch.Tensor | None = None,
    checkpoint_steps: bool = False,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """K-step sampling from noise (B, C, H, W) at the given timesteps -> latents (B, C, H, W)."""
    assert not (checkpoint_steps and sampler == "lcm"), "recomputing an lcm step would redraw its noise"
    batch = noise.shape[0]
    x = noise
    ends = list(timesteps[1:]) + [schedule.end_timestep]
    for index, (t, t_next) in enumerate(zip(timesteps, ends)):
        t_batch = torch.full((batch,), float(t), device=noise.device)
        t_next_batch = torch.full((batch,), float(t_next), device=noise.device)
        last = index == len(timesteps) - 1

        def one_step(x_t, t_batch=t_batch, t_next_batch=t_next_batch, last=last):
            output = denoise(x_t, t_batch, cond, guidance_w)
            if sampler == "ddim":
                x0, eps = schedule.to_x0_eps(output, x_t, t_batch, prediction_type)
                return schedule.ddim_step(x0, eps, t_next_batch)
            if sampler == "lcm":
                denoised = consistency_output(
                    schedule, output, x_t, t_batch, prediction_type, timestep_scaling
                )
                if last:
                    return denoised
                return schedule.ddim_step(denoised, random.normal(tuple(x_t.shape[1:])), t_next_batch)
            raise ValueError(f"unknown sampler {sampler!r}; valid: ddim, lcm")

        x = checkpoint(one_step, x, use_reentrant=False) if checkpoint_steps else one_step(x)
    return x
