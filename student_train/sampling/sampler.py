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
The timesteps each method samples at are in timesteps.py.
"""

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from shared.schedule import NoiseSchedule
from student_train.data.randomness import SampleRandom
from student_train.sampling.consistency import consistency_output

Denoise = Callable[
    ..., torch.Tensor
]  # (x_t (B,C,H,W), timesteps (B,), cond, guidance_w (B,) | None) -> output

# "cfg": the teacher's own sampler with classifier-free guidance at the store's scale (a blockkd
# student replaces the teacher's denoiser and nothing else); eval runs it as its teacher@K baseline.
# "scheduler": the student folder's own diffusers scheduler, driven as a stock pipeline does
# (with_scheduler.py): TCDScheduler, the flow DPM-Solver of reflow, Euler on the cached grid.
SAMPLER_OF_METHOD = {
    "direct": "ddim",
    "lcm": "lcm",
    "progressive": "ddim",
    "guidance": "scheduler",
    "tcd": "scheduler",
    "reflow": "scheduler",
    "blockkd": "cfg",
}
STUDENT_PREDICTION_TYPE = {"reflow": "flow_prediction"}  # else the teacher's


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
