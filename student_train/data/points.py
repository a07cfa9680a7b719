"""Points where the teacher's cond / uncond outputs are cached: what lcm, tcd and guidance train on.

A point is (x_t, t) with the teacher's raw outputs there, and the next time s of the grid the point
lies on (where a one-step solver lands). Every method that needs the teacher's output at a point
draws its points here, so they all read trajectory points (and, with the noised field group,
noised points) the same way:

    points = trajectory_points(batch, random, grid)     # one random cached step per sample
    points.x_t, points.t, points.s                      # (B, C, H, W), (B,), (B,)
    points.out_cond, points.out_uncond                  # (B, C, H, W) raw denoiser outputs (eps / v / velocity)
"""

from dataclasses import dataclass

import torch

from student_train.data.batches import Batch
from student_train.data.randomness import SampleRandom

TRAJECTORY_FIELDS = ("trajectory", "out_cond", "out_uncond")


@dataclass
class TeacherPoints:
    x_t: torch.Tensor  # (B, C, H, W)
    t: torch.Tensor  # (B,) the timestep passed to the denoiser at x_t
    s: torch.Tensor  # (B,) the next time of the point's grid (the one-step solver's end point)
    out_cond: torch.Tensor  # (B, C, H, W) the teacher's raw output at (x_t, t), cond half
    out_uncond: torch.Tensor | None  # (B, C, H, W) uncond half; None for a store without CFG


def pick_steps(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, S, ...) per-step tensor, (B,) step indices -> (B, ...)."""
    return tensor[torch.arange(tensor.shape[0], device=tensor.device), index.to(tensor.device)]


def trajectory_points(batch: Batch, random: SampleRandom, grid: torch.Tensor) -> TeacherPoints:
    """One cached trajectory point per sample, its step n ~ U{0, ..., S - 1} drawn per sample id;
    `grid` (S + 1,) holds the time of every trajectory point, then the end point."""
    trajectory = batch.fields["trajectory"]  # (B, S + 1, C, H, W)
    n = random.randint(0, trajectory.shape[1] - 1)  # (B,)
    grid = grid.to(trajectory.device)
    out_uncond = batch.fields.get("out_uncond")
    return TeacherPoints(
        x_t=pick_steps(trajectory, n),
        t=grid[n],
        s=grid[n + 1],
        out_cond=pick_steps(batch.fields["out_cond"], n),
        out_uncond=None if out_uncond is None else pick_steps(out_uncond, n),
    )
