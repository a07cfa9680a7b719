"""Points where the teacher's cond / uncond outputs are cached: what lcm, tcd and guidance train on.

A point is (x_t, t) with the teacher's raw outputs there, and the next time s of the grid the point
lies on (where a one-step solver lands). Every method that needs the teacher's output at a point
draws its points here (`--points`), so they all read them the same way:

    points = teacher_points("noised", batch, random, grid)   # one random point per sample
    points.x_t, points.t, points.s                           # (B, C, H, W), (B,), (B,)
    points.out_cond, points.out_uncond                       # (B, C, H, W) raw denoiser outputs (eps / v / velocity)

--points    reads                                    the point of a sample
trajectory  trajectory, out_cond, out_uncond         a step n ~ U{0..S-1} of the teacher's cached CFG
                                                     trajectory; s = the next cached step
noised      noised.x_t, noised.timestep,             one of its M noised points m ~ U{0..M-1}: clean
            noised.next_timestep, noised.out_cond,   latents noised to a timestep of LCM's solver grid
            noised.out_uncond                        (teacher_cache/noised_points.py); s = t - skip
mix         both                                     a fair coin per sample, then as above

Every draw comes from the sample's own generator (SampleRandom), in a fixed order (coin, n, m for
mix), so a point never depends on batch size, rank or a resume.
"""

from dataclasses import dataclass

import torch

from student_train.config import POINTS
from student_train.data.batches import Batch
from student_train.data.randomness import SampleRandom

TRAJECTORY_FIELDS = ("trajectory", "out_cond", "out_uncond")
NOISED_FIELDS = (
    "noised.x_t",
    "noised.timestep",
    "noised.next_timestep",
    "noised.out_cond",
    "noised.out_uncond",
)
POINT_FIELDS = {
    "trajectory": TRAJECTORY_FIELDS,
    "noised": NOISED_FIELDS,
    "mix": TRAJECTORY_FIELDS + NOISED_FIELDS,
}
assert set(POINT_FIELDS) == set(POINTS)


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


def noised_points(batch: Batch, random: SampleRandom) -> TeacherPoints:
    """One of each sample's M cached noised points, m ~ U{0, ..., M - 1} drawn per sample id."""
    x_t = batch.fields["noised.x_t"]  # (B, M, C, H, W)
    m = random.randint(0, x_t.shape[1])  # (B,)
    out_uncond = batch.fields.get("noised.out_uncond")
    return TeacherPoints(
        x_t=pick_steps(x_t, m),
        t=pick_steps(batch.fields["noised.timestep"], m),
        s=pick_steps(batch.fields["noised.next_timestep"], m),
        out_cond=pick_steps(batch.fields["noised.out_cond"], m),
        out_uncond=None if out_uncond is None else pick_steps(out_uncond, m),
    )


def mixed_points(batch: Batch, random: SampleRandom, grid: torch.Tensor) -> TeacherPoints:
    """Per sample, a noised point or a trajectory point with probability 1/2 each."""
    noised = random.uniform(0.0, 1.0) < 0.5  # (B,) drawn first
    on_trajectory, on_noise = trajectory_points(batch, random, grid), noised_points(batch, random)

    def choose(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        if a is None or b is None:
            return None
        mask = noised.to(a.device).view(-1, *([1] * (a.dim() - 1)))
        return torch.where(mask, a, b)

    return TeacherPoints(
        *(
            choose(getattr(on_noise, name), getattr(on_trajectory, name))
            for name in ("x_t", "t", "s", "out_cond", "out_uncond")
        )
    )


def teacher_points(kind: str, batch: Batch, random: SampleRandom, grid: torch.Tensor) -> TeacherPoints:
    """One point per sample of the `--points` kind; `grid` is the cached trajectory's (cached_grid)."""
    if kind == "trajectory":
        return trajectory_points(batch, random, grid)
    if kind == "noised":
        return noised_points(batch, random)
    if kind == "mix":
        return mixed_points(batch, random, grid)
    raise ValueError(f"unknown points {kind!r}; valid: {', '.join(POINTS)}")
