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

`solver_pair` (a sample's point, its w and the solver step's end) is also tcd's (losses/tcd.py, a
subclass): the two methods differ only in the consistency function applied to the pair.
"""

from dataclasses import dataclass

import torch

from shared.schedule import NoiseSchedule
from student_train.data.points import teacher_points
from student_train.losses.distance import Distance
from student_train.losses.guided import guided_solver_step
from student_train.sampling.consistency import consistency_output


@dataclass
class SolverPair:
    x_t: torch.Tensor  # (B, C, H, W) the cached point
    t: torch.Tensor  # (B,)
    x_s: torch.Tensor  # (B, C, H, W) one guided DDIM step from it, with the teacher's cached outputs
    s: torch.Tensor  # (B,)
    student_w: torch.Tensor | None  # (B,) the w guiding the step, for a w-conditioned student; else None


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

    def solver_pair(self, student, batch, random) -> SolverPair:
        """Per sample: a `--points` point (x_t, t), w ~ U[w_min, w_max] (drawn in that order), and the
        guided DDIM solver step t -> s from the point's cached cond / uncond outputs."""
        points = teacher_points(self.points, batch, random, self.grid)
        w = random.uniform(self.w_min, self.w_max)  # (B,)
        x_s = guided_solver_step(
            self.schedule,
            self.prediction_type,
            points.x_t,
            points.t,
            points.s,
            points.out_cond,
            points.out_uncond,
            w,
        )
        return SolverPair(points.x_t, points.t, x_s, points.s, w if student.w_conditioned else None)

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        pair = self.solver_pair(student, batch, random)
        online = consistency_output(
            self.schedule,
            student.denoise(pair.x_t, pair.t, batch.cond, pair.student_w),
            pair.x_t,
            pair.t,
            self.prediction_type,
            self.timestep_scaling,
        )
        with torch.no_grad():
            target = consistency_output(
                self.schedule,
                student.target_denoise(pair.x_s, pair.s, batch.cond, pair.student_w),
                pair.x_s,
                pair.s,
                self.prediction_type,
                self.timestep_scaling,
            )
        return self.distance(online, target)  # (B,)
