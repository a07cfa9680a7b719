"""guidance: guidance distillation, stage 1 (Meng et al. 2023, "On Distillation of Guided Diffusion
Models"; google-research ddpm_w_distillation/dpm.py `Model.training_losses`, configs
`*_condw_stage1_distill.py`).

A w-conditioned student (diffusers' guidance embedding, `time_cond_proj_dim`) learns in one pass
what the teacher gives in two with classifier-free guidance. At a cached point (x_t, t) and
w ~ U[w_min, w_max] (Imagen convention, Meng et al.: [0, 4]) the target is the guided teacher

    eps_target = (1 + w) eps_cond - w eps_uncond          (= uncond + (w + 1)(cond - uncond))

from the cached cond / uncond outputs, and the loss is d(eps_student(x_t, t, w), eps_target): the
reference's `mean_loss_weight_type="snr"` (SNR-weighted x error = eps error), for any prediction
type (both sides through `to_x0_eps`). A stock StableDiffusionPipeline runs the student with one
pass per step: a UNet with `time_cond_proj_dim` turns its CFG off and embeds `guidance_scale - 1`.

The points are `--points` (data/points.py), by default the cached trajectory points, which lie on
paths of the store's guidance at the times the student samples at; `--points noised` takes the
store's noised points instead (clean latents noised to LCM's solver grid), closer to the reference,
whose points are real images noised to random continuous times.
A LoRA student has no w input: it learns one w (--w-min = --w-max) and samples at guidance scale 1.
Stage 2 (progressive distillation of this student, keeping w) is `--init` + `--method progressive`.
"""

import torch

from shared.schedule import NoiseSchedule
from student_train.data.points import teacher_points
from student_train.losses.distance import Distance
from student_train.losses.guided import guided_output


class GuidanceLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        grid: list[float],
        prediction_type: str,
        distance: Distance,
        w_min: float = 0.0,
        w_max: float = 4.0,
        points: str = "trajectory",
    ):
        self.schedule = schedule
        self.grid = torch.tensor(grid)  # (S + 1,): the time of each cached trajectory point, then the end
        self.prediction_type = prediction_type
        self.distance = distance
        self.w_min, self.w_max = w_min, w_max
        self.points = points

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        points = teacher_points(self.points, batch, random, self.grid)
        w = random.uniform(self.w_min, self.w_max)  # (B,)
        guided = guided_output(points.out_uncond, points.out_cond, w + 1.0)  # the teacher's two passes
        output = student.denoise(points.x_t, points.t, batch.cond, w if student.w_conditioned else None)
        _, eps_student = self.schedule.to_x0_eps(output, points.x_t, points.t, self.prediction_type)
        _, eps_target = self.schedule.to_x0_eps(guided, points.x_t, points.t, self.prediction_type)
        return self.distance(eps_student, eps_target)  # (B,)
