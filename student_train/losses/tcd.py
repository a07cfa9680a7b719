"""tcd: trajectory consistency distillation (Zheng et al. 2024, "Trajectory Consistency Distillation").
jabir-zheng/TCD publishes the sampler (diffusers' TCDScheduler) and LoRAs; the training follows the
open reimplementation rootonchair/consistency_models_distill tcd/train_tcd_distill_lora_sd_wds.py.

As lcm, and through lcm's own code (a subclass of losses/lcm.py's LcmLoss: the same `--points`,
noised by default, w ~ U[w_min, w_max], the same guided DDIM solver step t -> s from the cached
cond / uncond outputs, `solver_pair`; the same EMA / no-grad target), but the consistency function
maps to an intermediate time s' <= s instead of 0:

    F(x, t -> s') = alpha_s' x0_hat(x, t) + sigma_s' eps_hat(x, t)     (TCD's semi-linear form: DDIM to s')
    loss = d( F_student(x_t, t -> s'),  F_target(x_s, s -> s') ),    s' = floor((1 - gamma) s), gamma ~ U[0, 1]

so the student learns every jump of TCDScheduler's strategic stochastic sampling (map to
floor((1 - gamma) t_prev), then re-noise to t_prev). gamma = 1 (s' = 0) is the consistency-model end:
with alphas_cumprod[0] = 1 it is lcm's loss without lcm's boundary scalings (c_skip = 0), which
TCDScheduler does not use either; gamma = 0 (s' = s) is one-step trajectory matching. The reference
draws s' among its DDIM grid points below s; here any integer time, since the sampler lands anywhere.
The exported student samples with TCDScheduler on the cached grid (981, 741, 481, 241 at 4 of 50) at
eta = --tcd-gamma, also when trained on noised points (LCM's solver grid): measured no worse at 2 and 4
steps than TCDScheduler's own timesteps (999, 759, 499, 259) and better at 1 (docs/methods.md).
"""

import torch

from shared.schedule import NoiseSchedule
from student_train.losses.distance import Distance
from student_train.losses.lcm import LcmLoss


class TcdLoss(LcmLoss):
    def __init__(
        self,
        schedule: NoiseSchedule,
        grid: list[float],
        prediction_type: str,
        distance: Distance,
        w_min: float = 5.0,
        w_max: float = 15.0,
        gamma_range: tuple[float, float] = (0.0, 1.0),  # the training draw of gamma (TCD: [0, 1])
        points: str = "trajectory",
    ):
        super().__init__(schedule, grid, prediction_type, distance, w_min, w_max, points=points)
        self.gamma_range = gamma_range

    def trajectory_map(self, output, x, t, target_time) -> torch.Tensor:
        """F(x, t -> s'): the model output at (x, t) taken by one DDIM step to s'. (B, C, H, W).
        F(x, t -> t) = x exactly (also where sigma_t = 0 would make eps_hat infinite)."""
        x0, eps = self.schedule.to_x0_eps(output, x, t, self.prediction_type)
        mapped = self.schedule.ddim_step(x0, eps, target_time)
        identity = (target_time == t).reshape(-1, *[1] * (x.dim() - 1))  # (B, 1, 1, 1)
        return torch.where(identity, x, mapped)

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        pair = self.solver_pair(student, batch, random)  # draws the point, then w
        gamma = random.uniform(*self.gamma_range)  # (B,)
        # TCDScheduler's rule, s' = floor((1 - gamma) s); the end stays
        target_time = torch.minimum(((1 - gamma) * pair.s).floor(), pair.s)
        output = student.denoise(pair.x_t, pair.t, batch.cond, pair.student_w)
        online = self.trajectory_map(output, pair.x_t, pair.t, target_time)
        with torch.no_grad():
            target_output = student.target_denoise(pair.x_s, pair.s, batch.cond, pair.student_w)
            target = self.trajectory_map(target_output, pair.x_s, pair.s, target_time)
        return self.distance(online, target)  # (B,)
