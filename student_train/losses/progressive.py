"""progressive: progressive distillation (Salimans & Ho 2022, google-research diffusion_distillation/dpm.py)
over the cached grid.

Round r (1..R) teaches one student step to cover J = 2^r steps of the teacher's cached S-step grid,
so each round halves the step count: the student's points are grid indices 0, J, 2J, ... and
after round R it samples in ceil(S / 2^R) steps. At a point i (z_t = trajectory[i], t = grid[i])
the target is the x that one DDIM step would need to land on the cached point j = min(i + J, S)
(z'' = trajectory[j], t'' = grid[j]):

    x_tilde = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t)

and the loss is w(t) d(x0_hat, x_tilde), w = max(SNR, 1) ("truncated_snr") or SNR + 1
("snr_plus_one", the v-loss). Unlike the paper the targets are the teacher's exact cached points,
not the previous round's student: no error accumulates across rounds. The student of a round starts
from the previous one; training steps are split evenly across rounds.
"""

import torch

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule, expand_like
from student_train.data.points import pick_steps
from student_train.losses.distance import Distance
from student_train.sampling import progressive_jump

FIELDS = ("trajectory",)
WEIGHTINGS = ("truncated_snr", "snr_plus_one")


def x_target(z_t, alpha_t, sigma_t, z_next, alpha_next, sigma_next) -> torch.Tensor:
    """Salimans & Ho's x_tilde: the x0 with which a DDIM step from z_t lands exactly on z_next."""
    ratio = expand_like(sigma_next / sigma_t, z_t)
    return (z_next - ratio * z_t) / (expand_like(alpha_next, z_t) - ratio * expand_like(alpha_t, z_t))


class ProgressiveLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        grid: list[float],
        prediction_type: str,
        distance: Distance,
        num_student_steps: int,
        total_train_steps: int,
        weighting: str = "truncated_snr",
    ):
        if weighting not in WEIGHTINGS:
            raise DistillCacheError(f"unknown --weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        self.schedule = schedule
        self.grid = torch.tensor(grid)  # (S + 1,)
        self.prediction_type = prediction_type
        self.distance = distance
        self.weighting = weighting
        num_grid_steps = len(grid) - 1
        final_jump = progressive_jump(num_grid_steps, num_student_steps)
        self.jumps = [2**r for r in range(1, final_jump.bit_length())] or [1]  # 2, 4, ..., 2^R
        self.total_train_steps = total_train_steps

    def jump_at(self, step: int) -> int:
        """Grid steps per student step in the round that `step` belongs to."""
        round_index = min(step * len(self.jumps) // max(self.total_train_steps, 1), len(self.jumps) - 1)
        return self.jumps[round_index]

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        trajectory = batch.fields["trajectory"]  # (B, S + 1, C, H, W)
        num_grid_steps = trajectory.shape[1] - 1
        jump = self.jump_at(step)
        start = jump * random.randint(0, -(-num_grid_steps // jump))  # (B,) multiples of J below S
        end = (start + jump).clamp(max=num_grid_steps)
        grid = self.grid.to(trajectory.device)
        t, t_next = grid[start], grid[end]
        z_t, z_next = pick_steps(trajectory, start), pick_steps(trajectory, end)
        alpha_t, sigma_t = (v.to(z_t.device) for v in self.schedule.alpha_sigma(t))
        alpha_next, sigma_next = (v.to(z_t.device) for v in self.schedule.alpha_sigma(t_next))
        target = x_target(z_t, alpha_t, sigma_t, z_next, alpha_next, sigma_next)
        x0_hat, _ = self.schedule.to_x0_eps(student.denoise(z_t, t, batch.cond), z_t, t, self.prediction_type)
        snr = alpha_t**2 / sigma_t**2
        weight = snr.clamp(min=1.0) if self.weighting == "truncated_snr" else snr + 1
        return weight * self.distance(x0_hat, target)  # (B,)
