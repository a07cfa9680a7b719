"""One pipeline call on a batch of jobs, observed by the capture hooks -> the batch's store arrays.

geometry = latent_geometry(teacher, height=None, width=None)
batch = capture_batch(teacher, hooks, jobs, sample_ids, geometry, steps=50, groups=fields, preview_size=32)
batch.arrays["trajectory"]        # (B, S + 1, C, H, W) on the CPU;  batch.finite: (B,) bool

The pipeline runs its S steps when a group needs them (PIPELINE_FIELD_GROUPS, or noised points from
the teacher's own final latents); with `--fields noised,cond --images ...` it is stopped at its first
denoiser call (capture.py, first_call_only): the batch then costs its text encoding, the VAE
encoding of its images and the 2 x M teacher passes of its noised points (noised_points.py).
"""

from dataclasses import dataclass

import torch

from shared.errors import DistillCacheError
from shared.noise import init_noise_sigma, initial_noise
from shared.schedule import NoiseSchedule
from shared.teacher import Teacher
from teacher_cache.capture import CaptureHooks, StepRecord
from teacher_cache.config import PIPELINE_FIELD_GROUPS
from teacher_cache.image_source import load_images
from teacher_cache.noised_points import encode_images, noised_point_arrays
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
    finite: torch.Tensor  # (B,) bool: no NaN / Inf in any of the sample's floating-point fields


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


def finite_samples(arrays: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
    """(B,) True where none of the sample's floating-point fields holds NaN or Inf."""
    checked = [array for array in arrays.values() if array.is_floating_point()]
    if not checked:
        return torch.ones(batch_size, dtype=torch.bool)
    return torch.stack([torch.isfinite(array).flatten(1).all(1) for array in checked]).all(0)


def needs_pipeline_run(groups: tuple[str, ...], images: str) -> bool:
    """Whether the kept groups need the pipeline's S steps (else its first denoiser call is enough)."""
    return any(group in PIPELINE_FIELD_GROUPS for group in groups) or ("noised" in groups and not images)


def schedule_of(pipe) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(dict(pipe.scheduler.config), type(pipe.scheduler).__name__)


def capture_batch(
    teacher: Teacher,
    hooks: CaptureHooks,
    jobs: list[CaptureJob],
    sample_ids: list[str],
    geometry: LatentGeometry,
    *,
    steps: int,
    groups: tuple[str, ...],
    preview_size: int,
    points_per_sample: int = 0,
    images: str = "",
) -> CapturedBatch:
    """Run the teacher on `jobs` (one guidance scale) and return what the store keeps; `images`: where
    the noised points' x0 come from (config.images: '' = the teacher's final latents)."""
    guidance = jobs[0].guidance_scale
    assert all(job.guidance_scale == guidance for job in jobs), "a batch shares one guidance scale"
    pipe, cfg = teacher.pipe, guidance > 1.0
    noise = initial_noise(
        [job.seed for job in jobs], geometry.latent_shape, pipe.device, teacher.denoiser.dtype
    )
    want_previews = "preview" in groups and preview_size > 0
    run_steps = needs_pipeline_run(groups, images)
    hooks.start(batch_size=len(jobs), cfg=cfg, first_call_only=not run_steps)

    def call_pipeline():
        return pipe(
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

    output = None
    if run_steps:
        output = call_pipeline()
        record = hooks.finish(initial_latents=noise * init_noise_sigma(pipe.scheduler))
    else:
        record = hooks.run_to_first_call(call_pipeline, pipe.scheduler)
    previews = to_previews(output.images, preview_size) if want_previews else None  # (B, h, w, 3) uint8
    arrays = batch_arrays(record, noise, previews, groups)
    if "noised" in groups:
        if images:
            x0 = encode_images(pipe, load_images(images, jobs), sample_ids, geometry.image_size)
        else:
            x0 = record.trajectory[:, -1]  # the teacher's own final latents
        noised = noised_point_arrays(
            teacher.denoiser,
            schedule_of(pipe),
            record.first_call,
            hooks.latent_argument,
            x0.to(teacher.denoiser.dtype),
            sample_ids,
            points_per_sample,
            steps,
            cfg,
        )
        arrays.update({name: array.detach().cpu().contiguous() for name, array in noised.items()})
    return CapturedBatch(record, arrays, finite_samples(arrays, len(jobs)))
