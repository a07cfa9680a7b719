"""The models of `student-train eval`: the teacher's denoiser and VAE, the student, the digit judge.

The teacher's VAE decodes every column (eval may load the VAE; training never does). The judge
(shared/judge.py) is loaded only when every prompt follows the digit grammar; it scores prompt
adherence and the Frechet distance to REAL_REFERENCE held-out real digits, featurized once.

    models = load_models("runs/student", "", "auto", "auto", distill, reader, prompts)
    images = decode(models.vae, latents)                 # [N, C, h, w] -> uint8 [N, H, W, 3]
    models.judge.scores(images, prompts)                 # {"adherence": points, "fd": ...}
"""

from dataclasses import dataclass

import numpy as np
import torch

from shared.errors import DistillCacheError
from student_train.eval.devices import place, resolve_device

REAL_REFERENCE = 2000  # held-out real digits whose judge features FD is measured against


@dataclass
class DigitJudge:
    """The judge and the features of REAL_REFERENCE held-out real digits, computed once per eval."""

    judge: object  # shared.judge.Judge
    real_features: np.ndarray  # [REAL_REFERENCE, D]

    def scores(self, images: np.ndarray, prompts: list[str]) -> dict:
        """Adherence in points (% of images whose digit and both colours match) and FD to real digits."""
        from shared.judge import frechet_distance

        return {
            "adherence": 100.0 * float(self.judge.adherence(images, prompts)),
            "fd": frechet_distance(self.judge.features(images), self.real_features),
        }

    def real_record(self, set_name: str, prompts: list[str]) -> dict:
        """Real digits drawn for the same prompts: the best adherence and the FD floor at this sample size."""
        from shared.digits import make_images

        real, _ = make_images(len(prompts), seed=1, split="heldout", prompts=prompts)
        record = {"set": set_name, "column": "real digits", "model": "real", "steps": 0, "sampler": "data"}
        return {**record, "samples": len(prompts), **self.scores(real, prompts)}


@dataclass
class Models:
    teacher: torch.nn.Module  # the teacher's denoiser
    vae: torch.nn.Module  # the teacher's VAE: decodes every column
    student: torch.nn.Module  # the student's denoiser (LoRA: the teacher's plus the adapter)
    scheduler: object  # the student folder's diffusers scheduler (its sampler when sampling = "scheduler")
    distill: dict  # the student's distill.json
    judge: DigitJudge | None  # None with --no-judge or prompts outside the digit grammar


def judge_for(prompts: list[str], device: torch.device) -> DigitJudge | None:
    """The digit judge when every prompt follows the digit grammar, else None (no adherence / FD)."""
    from shared.digits import parse_prompt

    if not prompts:
        return None
    try:
        for prompt in prompts:
            parse_prompt(prompt)
    except DistillCacheError:
        return None
    from shared.digits import make_images
    from shared.judge import load_judge

    judge = load_judge(str(device))
    real, _ = make_images(REAL_REFERENCE, seed=0, split="heldout")
    return DigitJudge(judge, judge.features(real))


def load_models(
    student: str, teacher: str, device: str, dtype: str, distill: dict, reader, prompts: list[str]
) -> Models:
    """The student folder `student` and its teacher (`teacher`, or the store's source) on `device`;
    the judge for `prompts` (none for an empty list)."""
    from shared.teacher import resolve_dtype
    from student_train.export import load_exported_student
    from student_train.sampling import load_student_scheduler
    from student_train.students.denoiser import load_denoiser

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    source = teacher or reader.teacher["source"]
    revision = None if teacher else reader.teacher["revision"]
    denoiser_name = reader.settings.get("denoiser", "unet")
    denoiser = load_denoiser(
        source, denoiser_name, revision, expected_digest=reader.fingerprint["denoiser_hash"]
    )
    teacher_denoiser = place(denoiser, device, dtype)
    vae = place(load_denoiser(source, "vae", revision, what="teacher VAE"), device, dtype)
    student_denoiser, _ = load_exported_student(student, teacher=teacher or None)
    return Models(
        teacher_denoiser,
        vae,
        place(student_denoiser, device, dtype),
        load_student_scheduler(student),
        distill,
        judge_for(prompts, device),
    )


@torch.no_grad()
def decode(vae: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
    """Latents [N, C, h, w] -> uint8 images [N, H, W, 3], as diffusers' image processor rounds them."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scaled = latents / vae.config.scaling_factor + shift
    images = vae.decode(scaled.to(next(vae.parameters()).dtype), return_dict=False)[0].float()  # [N, 3, H, W]
    images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()
