"""How students sample: the few-step sampler, the timesteps of each method, the exported scheduler.

sampler.py     sample(denoise, schedule, noise, cond, timesteps, prediction_type, sampler="ddim"|"lcm")
with_scheduler.py  sample_with_scheduler: a diffusers scheduler driven as a stock pipeline does
timesteps.py   cached_grid, student_timesteps, pipeline_timesteps, progressive_jump
consistency.py LCM's f(x_t, t): c_skip x_t + c_out x0_hat (DDPM family), x0_hat (flow family)
schedulers.py  student_scheduler (what export writes), load_student_scheduler, trained_schedule_kwargs
"""

from student_train.sampling.sampler import SAMPLER_OF_METHOD, STUDENT_PREDICTION_TYPE, sample
from student_train.sampling.schedulers import (
    load_student_scheduler,
    student_scheduler,
    trained_schedule_kwargs,
)
from student_train.sampling.timesteps import (
    cached_grid,
    pipeline_timesteps,
    progressive_jump,
    student_timesteps,
)
from student_train.sampling.with_scheduler import sample_with_scheduler

__all__ = [
    "SAMPLER_OF_METHOD",
    "STUDENT_PREDICTION_TYPE",
    "cached_grid",
    "load_student_scheduler",
    "pipeline_timesteps",
    "progressive_jump",
    "sample",
    "sample_with_scheduler",
    "student_scheduler",
    "student_timesteps",
    "trained_schedule_kwargs",
]
