"""The columns of `student-train eval`, from the cached initial noise and conditioning of each row:

    teacher@S   the teacher's cached many-step output `final_latents` (the reference, not recomputed)
    teacher@K   the teacher's denoiser, DDIM (flow: Euler) at K steps, CFG at the row's guidance (teacher_baseline.py);
                not sampled at K = S when that sampler is the one that made the cache (`samples_as_the_cache`:
                flow stores, DDPM stores at --teacher-spacing store): teacher@S is then the reference itself
    student@K   the student as users sample it (`student_latents`): its method's few-step sampler
                (sampling.py) or its exported scheduler at the trained timesteps; a "cfg" student
                (blockkd) with CFG, as the stock pipeline runs the exported folder. It does not depend
                on --teacher-spacing, which sets the teacher@K columns alone

Each column's kind records its denoiser evaluations per image (`evaluations`: 2 per step under CFG).

Every column is decoded with the teacher's VAE and kept with its latent MSE to teacher@S, batch by batch.

    columns = generate(eval_set, models, train_settings, steps=(1, 2, 4), batch_size=16, teacher_spacing="trailing")
    columns.all_images("student@4")                      # uint8 [N, H, W, 3]
"""

from dataclasses import dataclass

import numpy as np
import torch

from student_train.eval.models import Models, decode
from student_train.eval.sets import EvalSet
from student_train.eval.teacher_baseline import sample_with_cfg


def reference_label(settings: dict, steps: tuple[int, ...]) -> str:
    """The column of the cached many-step output: teacher@S (teacher@S cache if S is also a K)."""
    full = int(settings["num_inference_steps"])
    return f"teacher@{full} cache" if full in steps else f"teacher@{full}"


def student_latents(
    models: Models,
    settings: dict,
    noise,
    cond: dict,
    sample_ids: list[str],
    steps: int,
    uncond=None,
    guidance=None,
):
    """The student at `steps` steps with its method's sampler, from noise [B, C, h, w] -> [B, C, h, w]:
    ours (ddim / lcm) or, for sampler "scheduler", the folder's own scheduler as a stock pipeline runs it;
    sampler "cfg" (blockkd) is that scheduler with CFG from `uncond` (the cached uncond kwargs) at the
    rows' `guidance` scales (float or [B]), as the stock pipeline runs the exported folder."""
    from functools import partial

    from shared.schedule import NoiseSchedule
    from student_train.data.randomness import SampleRandom
    from student_train.sampling import pipeline_timesteps, sample, sample_with_scheduler, student_timesteps
    from student_train.students.denoiser import call_denoiser

    sampling, method = models.distill["sampling"], models.distill["method"]
    w = sampling.get("guidance_w")
    guidance_w = None if w is None else torch.full((noise.shape[0],), float(w), device=noise.device)  # [B]
    denoise = partial(call_denoiser, models.student)
    random = SampleRandom(0, steps, sample_ids, noise.device)
    if sampling["sampler"] == "cfg":
        if uncond is None or guidance is None:
            raise ValueError("a cfg student (blockkd) samples with CFG: pass the rows' uncond and guidance")
        return sample_with_cfg(
            models.student, models.scheduler, noise, cond, uncond, guidance, steps,
            pipeline_timesteps(method, steps, settings),
        )  # fmt: skip
    if sampling["sampler"] == "scheduler":
        return sample_with_scheduler(
            denoise,
            models.scheduler,
            noise,
            cond,
            steps,
            pipeline_timesteps(method, steps, settings),
            guidance_w,
            eta=models.distill["recommended"].get("eta", 0.0),
            generator=random.generators,
        ).float()
    schedule = NoiseSchedule.from_scheduler_config(
        settings["scheduler"]["config"], settings["scheduler"]["class"]
    )
    return sample(
        denoise,
        schedule,
        noise,
        cond,
        student_timesteps(method, steps, settings),
        sampling["prediction_type"],
        sampler=sampling["sampler"],
        random=random,
        guidance_w=guidance_w,
        timestep_scaling=sampling.get("timestep_scaling", 10.0),
    ).float()


@dataclass
class Columns:
    """Everything generated for one eval set: per column label, images and latent MSE to teacher@S."""

    prompts: list[str]
    reference: str  # the label of the cached teacher@S column
    images: dict[str, list[np.ndarray]]  # label -> batches of uint8 [B, H, W, 3]
    latent_mse: dict[str, list[torch.Tensor]]  # label -> batches of [B]
    kinds: dict[
        str, dict
    ]  # label -> {"model": teacher | student, "steps": K, "sampler": cache | ddim | lcm ...}

    def add(self, label: str, kind: dict, images: np.ndarray, latent_mse: torch.Tensor) -> None:
        self.kinds[label] = kind
        self.images.setdefault(label, []).append(images)
        self.latent_mse.setdefault(label, []).append(latent_mse.cpu())

    def all_images(self, label: str) -> np.ndarray:
        return np.concatenate(self.images[label])  # [N, H, W, 3]


@torch.no_grad()
def generate(
    eval_set: EvalSet,
    models: Models,
    train_settings: dict,
    steps: tuple[int, ...],
    batch_size: int,
    teacher_spacing: str,
    teacher_steps: tuple[int, ...] | None = None,
) -> Columns:
    """teacher@S (cached), then teacher@K and student@K for every K in `steps`, batch by batch from the
    cached noise; `teacher_spacing` sets teacher@K's DDIM timesteps (teacher_baseline.SPACINGS); teacher@K
    only for K in `teacher_steps` (None: every K), and never at K = S if it would recompute the cache."""
    from student_train.eval.image_metrics import mse
    from student_train.eval.teacher_baseline import (
        map_tensors,
        read_conditioning,
        samples_as_the_cache,
        teacher_sampler_name,
        teacher_scheduler,
    )

    reader, manifest = eval_set.reader, eval_set.reader.manifest
    device = next(models.teacher.parameters()).device
    dtype = next(models.teacher.parameters()).dtype
    reference = reference_label(reader.settings, steps)
    columns = Columns([str(manifest.column("prompt")[r]) for r in eval_set.rows], reference, {}, {}, {})
    full_steps, student_sampler = (
        int(reader.settings["num_inference_steps"]),
        models.distill["sampling"]["sampler"],
    )
    cfg = bool(reader.settings.get("cfg", True))
    teacher_sampler = teacher_sampler_name(reader.settings)
    sampled_teacher_steps = [
        k
        for k in steps
        if (teacher_steps is None or k in teacher_steps)
        and not (k == full_steps and samples_as_the_cache(reader.settings, teacher_spacing))
    ]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for start in range(0, len(eval_set.rows), batch_size):
        rows = eval_set.rows[start : start + batch_size]
        noise = reader.read("noise", rows).float().to(device)  # [B, C, h, w]
        final = reader.read("final_latents", rows).float().to(device)  # [B, C, h, w]
        cond = map_tensors(read_conditioning(reader, rows, "cond"), lambda x: x.to(device))
        uncond = map_tensors(read_conditioning(reader, rows, "uncond"), lambda x: x.to(device))
        guidance = torch.tensor([float(manifest.column("guidance_scale")[r].as_py()) for r in rows])  # [B]
        sample_ids = [str(manifest.column("sample_id")[r]) for r in rows]

        def add(label: str, model: str, k: int, sampler: str, latents: torch.Tensor, final=final) -> None:
            # CFG: the teacher's columns and a "cfg" student call the denoiser twice per step; a few-step
            # student (direct, progressive: "ddim"; lcm) samples without CFG
            evaluations = k * (2 if cfg and (model == "teacher" or sampler == "cfg") else 1)
            kind = {"model": model, "steps": k, "sampler": sampler, "evaluations": evaluations}
            columns.add(label, kind, decode(models.vae, latents), mse(latents, final))

        add(reference, "teacher", full_steps, "cache", final)
        for k in steps:
            with autocast:
                if k in sampled_teacher_steps:
                    scheduler = teacher_scheduler(reader.settings, teacher_spacing)
                    teacher = sample_with_cfg(models.teacher, scheduler, noise, cond, uncond, guidance, k)
                    add(f"teacher@{k}", "teacher", k, teacher_sampler, teacher)
                student = student_latents(
                    models, train_settings, noise, cond, sample_ids, k, uncond, guidance
                )
            add(f"student@{k}", "student", k, student_sampler, student)
    return columns
