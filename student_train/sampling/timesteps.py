"""The timesteps a student trains and samples at, per method, on the teacher's cached grid.

  grid = cached_grid(settings, schedule)             # the S cached timesteps + the end point
  timesteps = student_timesteps("lcm", 4, settings)  # the K timesteps of a 4-step lcm student

direct       diffusers' DDIMScheduler on the teacher's schedule, "trailing" spacing (starts at t = T-1)
blockkd      the teacher's own scheduler (the student samples as the teacher does, with CFG)
lcm          stock LCMScheduler(original_inference_steps=S).set_timesteps(K): K points of LCM's solver
             grid of S (50 of 1000: 999, 759, 499, 259 for K = 4), the grid noised points are drawn
             from and what `pipe(num_inference_steps=K)` samples at; flow-matching stores: every
             (S / K)-th point of the cached grid (LCMScheduler's index rule)
tcd,         every (S / K)-th point of the cached S-step grid, LCMScheduler's index rule (at K = S
guidance     the teacher's own timesteps)
progressive  every 2^R-th point of the cached grid, R = the last round (see losses/progressive.py)
reflow       the exported flow scheduler's own K timesteps (it takes no custom ones:
             `pipeline_timesteps` is None)
"""

import math

import numpy as np

from shared.schedule import NoiseSchedule


def cached_grid(settings: dict, schedule: NoiseSchedule) -> list[float]:
    """The teacher's S timesteps plus the end point: grid[i] is the time of trajectory point i."""
    return [float(t) for t in settings["timesteps"]] + [schedule.end_timestep]


def progressive_jump(num_grid_steps: int, num_student_steps: int) -> int:
    """Grid steps per student step after the last round: the smallest 2^R with ceil(S / 2^R) <= K."""
    rounds = max(0, math.ceil(math.log2(num_grid_steps / num_student_steps)))
    return 2**rounds


def student_timesteps(method: str, num_steps: int, settings: dict) -> list[float]:
    """The K timesteps a student of `method` samples at (the ones it was trained at)."""
    scheduler = settings["scheduler"]
    num_grid_steps = len(settings["timesteps"])
    if method in ("direct", "reflow", "blockkd") or (
        method == "lcm" and not scheduler["class"].startswith("FlowMatch")
    ):
        from student_train.sampling.schedulers import student_scheduler

        few_step = student_scheduler(method, scheduler, num_grid_steps)
        few_step.set_timesteps(num_steps)
        return [float(t) for t in few_step.timesteps]
    if method in ("lcm", "tcd", "guidance"):
        indices = np.floor(np.linspace(0, num_grid_steps, num_steps, endpoint=False)).astype(int)
    elif method == "progressive":
        indices = np.arange(0, num_grid_steps, progressive_jump(num_grid_steps, num_steps))
    else:
        raise ValueError(f"no sampling timesteps for method {method!r}")
    return [float(settings["timesteps"][i]) for i in indices]


def pipeline_timesteps(method: str, num_steps: int, settings: dict) -> list[float] | None:
    """The custom `timesteps=` a stock pipeline needs to sample as the student trained; None where the
    exported scheduler makes them itself (reflow's flow scheduler rejects custom timesteps)."""
    return None if method == "reflow" else student_timesteps(method, num_steps, settings)
