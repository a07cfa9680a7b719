"""The teacher guided with w from its cached cond / uncond outputs, at any w (the capture's guidance
is not baked in): what lcm, tcd and guidance regress, and what eval's teacher@K samples with.

Two conventions of the same formula:
    diffusers  guided = uncond + scale (cond - uncond)          (pipeline `guidance_scale`)
    Imagen     guided = cond + w (cond - uncond),  w = scale - 1 (LCM scripts, Meng et al.: (1 + w) c - w u)

    guided = guided_output(out_uncond, out_cond, w + 1)            # (B, C, H, W) raw output (eps / v / velocity)
    x_s = guided_solver_step(schedule, "epsilon", x_t, t, s, out_cond, out_uncond, w)   # one DDIM step t -> s

Every prediction type converts to (x0, eps) affinely with weights that sum to one, so guiding the
raw output and converting equals converting each half and guiding x0 and eps (the LCM script's way).
"""

import torch

from shared.schedule import NoiseSchedule


def guided_output(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale) -> torch.Tensor:
    """Classifier-free guidance, diffusers' convention: u + scale (c - u); scale a float or (B,)."""
    scale = torch.as_tensor(guidance_scale, dtype=out_cond.dtype, device=out_cond.device)
    scale = scale.reshape(-1, *[1] * (out_cond.dim() - 1)) if scale.dim() else scale  # (B, 1, 1, 1)
    return out_uncond + scale * (out_cond - out_uncond)


def guided_solver_step(
    schedule: NoiseSchedule,
    prediction_type: str,
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    out_cond: torch.Tensor,
    out_uncond: torch.Tensor,
    w: torch.Tensor,
) -> torch.Tensor:
    """One DDIM step t -> s of the teacher guided with Imagen w (B,), from its cached outputs. (B, C, H, W)."""
    guided = guided_output(out_uncond, out_cond, w + 1.0)
    x0, eps = schedule.to_x0_eps(guided, x_t, t, prediction_type)
    return schedule.ddim_step(x0, eps, s)
