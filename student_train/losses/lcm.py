"""lcm: latent consistency distillation (Luo et al. 2023), as diffusers'
examples/consistency_distillation/train_lcm_distill_sd_wds.py, with the teacher replaced by the cache.

For each sample: a cached point (x_t, t) with its solver end point s (`--points`, data/points.py:
a noised point — clean latents noised to the script's DDIM solver grid, as the script makes them —
or a cached trajectory point, s = the next cached step; skip k = 20 train steps for 50 of 1000, the
script's default); w ~ U[w_min, w_max] (Imagen convention: guided = cond + w (cond - uncond), i.e.
pipeline scale w + 1); the cached cond / uncond outputs at that point, guided with w, give one DDIM
solver step to s; the loss is

    d( f_student(x_t, t, w),  f_target(x_s, s, w) )     f = c_skip x + c_out x0_hat (consistency.py)

with f_target the EMA copy (full students) or the student itself under no_grad (LoRA). NB trajectory
points lie on paths the teacher made at the store's guidance, not on noised data: for w far from it
they are off the w-guided ODE; noised points hold for any w.
"""

import torch

from shared.schedule import NoiseSchedule
from student_train.data.points import POINT_FIELDS, teacher_points
from student_train.losses.distance import Distance
from student_train.losses.guided import guided_solver_step
from student_train.sampling.consistency import consistency_output


def fields(config) -> tuple[str, ...]:
    """The store fields lcm reads with these settings (besides cond.*)."""
    return POINT_FIELDS[config.points]


class LcmLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        grid: list[float],
        prediction_type: str,
        distance: Distance,
        w_min: float = 5.0,
        w_max: float = 15.0,
        timestep_scaling: float = 10.0,
        points: str = "trajectory",
    ):
        self.schedule = schedule
        self.grid = torch.tensor(grid)  # (S + 1,): the time of each cached trajectory point, then the end
        self.prediction_type = prediction_type
        self.distance = distance
        self.w_min, self.w_max = w_min, w_max
        self.timestep_scaling = timestep_scaling
        self.points = points

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        points = teacher_points(self.points, batch, random, self.grid)
        x_t, t, s = points.x_t, points.t, points.s
        w = random.uniform(self.w_min, self.w_max)  # (B,)
        x_s = guided_solver_step(
            self.schedule, self.prediction_type, x_t, t, s, points.out_cond, points.out_uncond, w
        )
        student_w = w if student.w_conditioned else None
        online = consistency_output(
            self.schedule,
            student.denoise(x_t, t, batch.cond, student_w),
            x_t,
            t,
            self.prediction_type,
            self.timestep_scaling,
        )
        with torch.no_grad():
            target = consistency_output(
                self.schedule,
                student.target_denoise(x_s, s, batch.cond, student_w),
                x_s,
                s,
                self.prediction_type,
                self.timestep_scaling,
            )
        return self.distance(online, target)  # (B,)
