"""One pipeline call on a batch of jobs, observed by the capture hooks -> the batch's store arrays.

geometry = latent_geometry(teacher, height=None, width=None)
batch = capture_batch(teacher, hooks, jobs, geometry, steps=50, groups=fields, preview_size=32)
batch.arrays["trajectory"]        # (B, S + 1, C, H, W) on the CPU;  batch.finite: (B,) bool
"""

from dataclasses import dataclass

import torch

from shared.errors import DistillCacheError
from shared.noise import init_noise_sigma, initial_noise
from shared.teacher import Teacher
from teacher_cache.capture import CaptureHooks, StepRecord
from teacher_cache.preview import to_previews
from teacher_cache.prompts import CaptureJob
from teacher_cache.store_layout import batch_arrays


@dataclass(frozen=True)
class LatentGeometry:
    latent_shape: tuple[int, int, int]  # (C, H, W) of the denoiser's latents
    image_size: tuple[int, int]  # (height, width) in pixels, passed to the pipeline


@dataclass
class CapturedBatch:
    record: StepRecord
    arrays: dict[str, torch.Tensor]  # field name -> (B, *per-sample shape), CPU
    finite: torch.Tensor  # (B,) bool: no NaN / Inf in the sample's outputs and trajectory


def latent_geometry(teacher: Teacher, height: int | None, width: int | None) -> LatentGeometry:
    """Latent (C, H, W) and image size: from --height/--width, else the denoiser's sample_size."""
    scale = int(getattr(teacher.pipe, "vae_scale_factor", 8))
    sample_size = teacher.denoiser.config.sample_size
    default_h, default_w = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
    sizes = []
    for name, pixels, default in (("height", height, default_h), ("width", width, default_w)):
        if pixels is not None and pixels % scale:
            raise DistillCacheError(f"--{name} {pixels} is not a multiple of the VAE scale factor {scale}")
        sizes.append(pixels // scale if pixels is not None else default)
    channels = int(teacher.denoiser.config.in_channels)
    return LatentGeometry((channels, sizes[0], sizes[1]), (sizes[0] * scale, sizes[1] * scale))


def finite_samples(record: StepRecord) -> torch.Tensor:
    """(B,) True where the sample's outputs and trajectory hold no NaN or Inf."""
    checked = [record.trajectory, record.out_cond] + (
        [record.out_uncond] if record.out_uncond is not None else []
    )
    return torch.stack([torch.isfinite(tensor).flatten(1).all(1) for tensor in checked]).all(0).cpu()


def capture_batch(
    teacher: Teacher,
    hooks: CaptureHooks,
    jobs: list[CaptureJob],
    geometry: LatentGeometry,
    *,
    steps: int,
    groups: tuple[str, ...],
    preview_size: int,
) -> CapturedBatch:
    """Run the teacher once on `jobs` (one guidance scale) and return what the store keeps."""
    guidance = jobs[0].guidance_scale
    assert all(job.guidance_scale == guidance for job in jobs), "a batch shares one guidance scale"
    pipe = teacher.pipe
    noise = initial_noise(
        [job.seed for job in jobs], geometry.latent_shape, pipe.device, teacher.denoiser.dtype
    )
    want_previews = "preview" in groups and preview_size > 0
    hooks.start(batch_size=len(jobs), cfg=guidance > 1.0)
    output = pipe(
        prompt=[job.prompt for job in jobs],
        negative_prompt=[job.negative_prompt for job in jobs],
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise,
        height=geometry.image_size[0],
        width=geometry.image_size[1],
        output_type="pt" if want_previews else "latent",
        callback_on_step_end=hooks.on_step_end,
    )
    record = hooks.finish(initial_latents=noise * init_noise_sigma(pipe.scheduler))
    previews = to_previews(output.images, preview_size) if want_previews else None  # (B, h, w, 3) uint8
    return CapturedBatch(record, batch_arrays(record, noise, previews, groups), finite_samples(record))
