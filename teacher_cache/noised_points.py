"""The `noised` field group: clean latents x0 noised to timesteps of LCM's solver grid, and the
teacher's cond / uncond outputs there — the points diffusers' LCM scripts make in their training
loop (train_lcm_distill_sd_wds.py: VAE-encode an image, `noise_scheduler.add_noise` at a start
timestep of the DDIM solver grid, two teacher passes), made once and stored.

For a sample with id `sample_id`, M = --noised-points-per-sample points:

    grid, ends = solver_grid(T, S)                  # S = --steps: (19, 39, ..., 999) for 50 of 1000
    n          = M distinct grid indices (a permutation, repeated if M > S)  \\ one generator seeded
    eps        = (M, C, H, W) standard normal, float32                       / from ("noised", sample_id)
    x_t[m]     = alpha(grid[n[m]]) x0 + sigma(grid[n[m]]) eps[m]            (shared.schedule, any family)
    out_cond[m], out_uncond[m] = the teacher's denoiser at (x_t[m], grid[n[m]]), called with the exact
                                 arguments of the pipeline's step-0 call (conditioning, flags)

x0 is the teacher's own final latents, or the sample's image encoded by the teacher's VAE with its
latent distribution *sampled* (a generator seeded from ("vae", sample_id)), as the LCM scripts do
(`latent_dist.sample()`): the teacher was trained on sampled latents, so the points lie where its
training data did; the posterior's spread is small next to any noise level of the grid.

Stored per sample (docs/contracts.md): noised.x_t (M, C, H, W) exactly as passed to the denoiser,
noised.timestep (M,) and noised.next_timestep (M,) (the solver's end point max(t - skip, 0)),
noised.out_cond / noised.out_uncond (M, C, H, W). Nothing depends on the batch, rank or a resume.
"""

import torch
from torch import nn

from shared.noise import keyed_seed
from shared.schedule import NoiseSchedule, expand_like, solver_grid
from teacher_cache.capture import TIMESTEP_ARGUMENT, first_tensor


def point_draws(
    sample_id: str, count: int, grid_size: int, latent_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid indices (M,) int64, noise (M, C, H, W) float32) of one sample, from its own generator."""
    generator = torch.Generator().manual_seed(keyed_seed("noised", sample_id))
    rounds = -(-count // grid_size)
    indices = torch.cat([torch.randperm(grid_size, generator=generator) for _ in range(rounds)])[:count]
    noise = torch.randn((count, *latent_shape), generator=generator)
    return indices, noise


@torch.no_grad()
def encode_images(pipe, images: list, sample_ids: list[str], image_size: tuple[int, int]) -> torch.Tensor:
    """RGB images (PIL, already the teacher's size) -> the teacher's scaled latents (B, C, H, W):
    VAE posterior sampled with one generator per sample id, then (z - shift) * scaling_factor."""
    from diffusers.image_processor import VaeImageProcessor

    vae = pipe.vae
    processor = getattr(pipe, "image_processor", None) or VaeImageProcessor()
    pixels = processor.preprocess(
        images, height=image_size[0], width=image_size[1]
    )  # (B, 3, H, W) in [-1, 1]
    posterior = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    generators = [torch.Generator().manual_seed(keyed_seed("vae", sample_id)) for sample_id in sample_ids]
    latents = posterior.sample(generator=generators)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def replay_arguments(
    first_call: dict, latent_argument: str, x_t: torch.Tensor, t: torch.Tensor, cfg: bool
) -> dict:
    """The pipeline's step-0 denoiser arguments with other latents x_t (B, C, H, W) and per-sample
    timesteps t (B,): the batch keeps the pipeline's layout ([uncond; cond] under CFG)."""
    recorded_t = first_call.get(TIMESTEP_ARGUMENT)
    dtype = recorded_t.dtype if isinstance(recorded_t, torch.Tensor) else t.dtype
    latents = torch.cat([x_t, x_t]) if cfg else x_t
    timesteps = (torch.cat([t, t]) if cfg else t).to(device=x_t.device, dtype=dtype)
    return {**first_call, latent_argument: latents, TIMESTEP_ARGUMENT: timesteps}


@torch.no_grad()
def teacher_outputs(
    denoiser: nn.Module, first_call: dict, latent_argument: str, x_t: torch.Tensor, t: torch.Tensor, cfg: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The teacher's raw outputs at (x_t (B, C, H, W), t (B,)): (cond half, uncond half or None)."""
    output = first_tensor(denoiser(**replay_arguments(first_call, latent_argument, x_t, t, cfg)))
    batch = x_t.shape[0]
    return (output[batch:], output[:batch]) if cfg else (output, None)


def noised_point_arrays(
    denoiser: nn.Module,
    schedule: NoiseSchedule,
    first_call: dict,
    latent_argument: str,
    x0: torch.Tensor,
    sample_ids: list[str],
    points_per_sample: int,
    grid_steps: int,
    cfg: bool,
) -> dict[str, torch.Tensor]:
    """The noised fields of a batch with clean latents x0 (B, C, H, W): {name: (B, M, ...)}; one
    denoiser call per point index m, on the pipeline's own batch layout."""
    grid, ends = (
        torch.tensor(values, dtype=torch.float32)
        for values in solver_grid(schedule.num_train_timesteps, grid_steps)
    )
    draws = [
        point_draws(sample_id, points_per_sample, grid_steps, tuple(x0.shape[1:])) for sample_id in sample_ids
    ]
    indices = torch.stack([index for index, _ in draws])  # (B, M)
    noise = torch.stack([eps for _, eps in draws]).to(x0.device)  # (B, M, C, H, W) float32
    timesteps, next_timesteps = grid[indices], ends[indices]  # (B, M)
    x_t, out_cond, out_uncond = [], [], []
    for m in range(points_per_sample):
        t = timesteps[:, m].to(x0.device)
        alpha, sigma = (expand_like(v, noise[:, m]) for v in schedule.alpha_sigma(t))
        point = (alpha * x0.float() + sigma * noise[:, m]).to(x0.dtype)  # exactly what the denoiser sees
        cond, uncond = teacher_outputs(denoiser, first_call, latent_argument, point, t, cfg)
        x_t.append(point)
        out_cond.append(cond)
        out_uncond.append(uncond)
    arrays = {
        "noised.x_t": torch.stack(x_t, dim=1),
        "noised.timestep": timesteps,
        "noised.next_timestep": next_timesteps,
        "noised.out_cond": torch.stack(out_cond, dim=1),
    }
    if cfg:
        arrays["noised.out_uncond"] = torch.stack(out_uncond, dim=1)
    return arrays
