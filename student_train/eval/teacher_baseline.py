"""The teacher at K steps: the baseline every few-step student is compared with.

The teacher's own denoiser, a deterministic few-step scheduler on its noise schedule (diffusers'
DDIMScheduler, eta = 0, for the DDPM family; FlowMatchEulerDiscreteScheduler with the teacher's shift
for the flow family) and classifier-free guidance at the store's guidance scale, started from the
cached initial noise and fed the cached cond / uncond conditioning, so no text encoder is needed:

    scheduler = teacher_scheduler(reader.settings, spacing="trailing")
    cond, uncond = read_conditioning(reader, rows, "cond"), read_conditioning(reader, rows, "uncond")
    latents = sample_with_cfg(unet, scheduler, reader.read("noise", rows), cond, uncond, guidance, 4)

`sample_with_cfg` is diffusers' own CFG loop (uncond half first, `scale_model_input`, `step`) with
any diffusers scheduler: with the teacher's scheduler at the store's step count it reproduces the
cached `final_latents`.
"""

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from shared.errors import DistillCacheError
from shared.noise import init_noise_sigma
from student_train.students.denoiser import call_denoiser, nest_conditioning

SPACINGS = ("trailing", "store")


def teacher_scheduler(settings: dict, spacing: str = "store") -> SchedulerMixin:
    """The teacher's few-step scheduler on its noise schedule (the store's `settings["scheduler"]`).

    DDPM family: a DDIMScheduler; spacing "store" keeps the teacher's own `timestep_spacing`,
    "trailing" makes every K start at t = T - 1, from pure noise like the cached noise (Lin et al.
    2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"): Stable Diffusion's
    "leading" spacing starts K = 1 at t = 1 and K = 4 at t = 751, a strawman baseline at few steps.
    Flow family: the FlowMatchEulerDiscreteScheduler of the store's config (every K starts at sigma = 1
    under either spacing).
    """
    if spacing not in SPACINGS:
        raise DistillCacheError(f"unknown timestep spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    config = {key: value for key, value in settings["scheduler"]["config"].items() if not key.startswith("_")}
    if settings["scheduler"].get("class", "").startswith("FlowMatch"):
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    overrides = {"timestep_spacing": "trailing"} if spacing == "trailing" else {}
    return DDIMScheduler.from_config(config, **overrides)


def teacher_sampler_name(settings: dict) -> str:
    """How eval names teacher@K's sampler: ddim (DDPM family) or euler (flow family)."""
    return "euler" if settings["scheduler"].get("class", "").startswith("FlowMatch") else "ddim"


def read_conditioning(reader, rows: Sequence[int], half: str) -> dict:
    """The cached denoiser kwargs of one CFG half as nested kwargs, each [len(rows), ...].

    Fields `cond.encoder_hidden_states` and `cond.added_cond_kwargs.text_embeds` become
    {"encoder_hidden_states": ..., "added_cond_kwargs": {"text_embeds": ...}}.
    """
    prefix = f"{half}."
    names = sorted(name for name in reader.fields if name.startswith(prefix))
    if not names:
        raise DistillCacheError(
            f"the store has no '{half}.*' conditioning fields; re-run teacher-cache run with a CFG teacher"
        )
    return nest_conditioning({name[len(prefix) :]: reader.read(name, rows) for name in names})


def concat_halves(uncond: dict, cond: dict) -> dict:
    """Nested kwargs of the two halves joined along the batch axis, uncond first (diffusers' order)."""
    return {
        key: concat_halves(value, cond[key]) if isinstance(value, dict) else torch.cat([value, cond[key]])
        for key, value in uncond.items()
    }


def map_tensors(kwargs: dict, fn) -> dict:
    """Apply `fn` to every tensor of nested kwargs (e.g. move to a device, slice a batch)."""
    return {
        key: map_tensors(value, fn) if isinstance(value, dict) else fn(value) for key, value in kwargs.items()
    }


def guided_output(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale) -> torch.Tensor:
    """Classifier-free guidance, diffusers' convention: u + w (c - u); w a float or [N]."""
    w = torch.as_tensor(guidance_scale, dtype=out_cond.dtype, device=out_cond.device)
    w = w.reshape(-1, *[1] * (out_cond.dim() - 1)) if w.dim() else w  # [N, 1, 1, 1]
    return out_uncond + w * (out_cond - out_uncond)


@torch.no_grad()
def sample_with_cfg(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    cond: dict,
    uncond: dict,
    guidance_scale,
    num_steps: int,
) -> torch.Tensor:
    """K-step CFG sampling from unit-variance noise [N, C, H, W]; returns float32 latents [N, C, H, W].

    unet: the teacher's denoiser (UNet or transformer, called through `call_denoiser`);
    cond / uncond: the denoiser's kwargs for each half, tensors [N, ...] (nested dicts allowed);
    guidance_scale: a float or a tensor [N] (rows may carry their own).
    """
    dtype = next(unet.parameters()).dtype
    scheduler.set_timesteps(num_steps, device=noise.device)
    conditioning = map_tensors(concat_halves(uncond, cond), lambda x: x.to(noise.device, dtype))  # [2N, ...]
    latents = noise.float() * init_noise_sigma(scheduler)  # [N, C, H, W]; 1 for flow schedulers
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents])  # [2N, C, H, W]
        if hasattr(scheduler, "scale_model_input"):  # flow schedulers have none (identity)
            model_input = scheduler.scale_model_input(model_input, t)
        timesteps = t.expand(model_input.shape[0])  # [2N]
        output = call_denoiser(unet, model_input.to(dtype), timesteps, conditioning).float()
        out_uncond, out_cond = output.chunk(2)
        latents = scheduler.step(guided_output(out_uncond, out_cond, guidance_scale), t, latents).prev_sample
    return latents
