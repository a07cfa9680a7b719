"""The consistency function f(x_t, t) of LCM (Luo et al. 2023, after Song et al. 2023), per family:

DDPM family, as diffusers' LCM scripts and LCMScheduler (`get_scalings_for_boundary_condition_discrete`):

    f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t)
    c_skip = sigma_data^2 / ((k t)^2 + sigma_data^2),  c_out = k t / sqrt((k t)^2 + sigma_data^2)

with sigma_data = 0.5 and timestep scaling k = 10; f(x, 0) = x is the boundary condition, and
timesteps below 0 (the end of a DDPM grid) count as 0.

Flow family, as diffusers' FlowMatchLCMScheduler.step: f(x_t, t) = x0_hat = x_t - sigma v. At
sigma = 0 (the end of a flow grid) x0_hat = x_t, so the boundary condition f = identity holds by
the parameterisation itself, and no c_skip / c_out are needed (c_skip = 0, c_out = 1).

Used by the lcm loss and the lcm sampler.
"""

import torch

from shared.schedule import NoiseSchedule, expand_like

SIGMA_DATA = 0.5


def boundary_scalings(
    timesteps: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPM family: (B,) timesteps -> c_skip (B,), c_out (B,)."""
    scaled = timestep_scaling * timesteps.float().clamp(min=0)
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def consistency_output(
    schedule: NoiseSchedule,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """f(x_t, t), (B, C, H, W): the consistency function's estimate of the clean latents."""
    x0, _ = schedule.to_x0_eps(model_output, x_t, timesteps, prediction_type)
    if schedule.family == "flow":
        return x0  # x_t - sigma v: the identity at sigma = 0
    c_skip, c_out = (
        expand_like(c.to(x_t.device), x_t) for c in boundary_scalings(timesteps, timestep_scaling)
    )
    return c_skip * x_t + c_out * x0
