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
from student_train.losses.guided import guided_output
from student_train.sampling.with_scheduler import sample_with_scheduler
from student_train.students.denoiser import call_denoiser, concat_halves, nest_conditioning

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


def samples_as_the_cache(settings: dict, spacing: str) -> bool:
    """Whether teacher@S (S = the store's step count) at this spacing is the sampler that made the cache:
    the store's own scheduler class (DDIMScheduler, FlowMatchEulerDiscreteScheduler) at the very
    timesteps the pipeline passed. Then teacher@S would recompute the cached `final_latents` (the
    reference), so eval reuses them instead of sampling it again. DDPM stores with spacing "trailing"
    on a "leading" teacher, or a teacher whose own scheduler is another class (PNDM, Euler, ...), give
    another sampler, whose teacher@S is sampled."""
    scheduler = teacher_scheduler(settings, spacing)
    if type(scheduler).__name__ != settings["scheduler"].get("class"):
        return False
    scheduler.set_timesteps(int(settings["num_inference_steps"]))
    cached = torch.tensor(settings["timesteps"], dtype=torch.float64)
    ours = scheduler.timesteps.to(torch.float64)
    return ours.shape == cached.shape and torch.allclose(ours, cached, rtol=0, atol=1e-3)


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


def map_tensors(kwargs: dict, fn) -> dict:
    """Apply `fn` to every tensor of nested kwargs (e.g. move to a device, slice a batch)."""
    return {
        key: map_tensors(value, fn) if isinstance(value, dict) else fn(value) for key, value in kwargs.items()
    }


@torch.no_grad()
def sample_with_cfg(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    cond: dict,
    uncond: dict,
    guidance_scale,
    num_steps: int,
    timesteps: list[float] | None = None,
) -> torch.Tensor:
    """K-step CFG sampling from unit-variance noise [N, C, H, W]; returns float32 latents [N, C, H, W].

    unet: the teacher's denoiser (UNet or transformer, called through `call_denoiser`);
    cond / uncond: the denoiser's kwargs for each half, tensors [N, ...] (nested dicts allowed);
    guidance_scale: a float or a tensor [N] (rows may carry their own); timesteps: custom ones, as a
    stock pipeline passes them (None: the scheduler's own K).
    """
    dtype = next(unet.parameters()).dtype
    conditioning = map_tensors(concat_halves(uncond, cond), lambda x: x.to(noise.device, dtype))  # [2N, ...]

    def cfg_denoise(x_t, timesteps, _cond, _guidance_w):  # one batched pass over both halves
        output = call_denoiser(unet, torch.cat([x_t, x_t]).to(dtype), timesteps.repeat(2), conditioning)
        out_uncond, out_cond = output.float().chunk(2)
        return guided_output(out_uncond, out_cond, guidance_scale)

    return sample_with_scheduler(cfg_denoise, scheduler, noise, {}, num_steps, timesteps)
