"""reflow: rectified flow on the cached couplings (Liu et al. 2023, "Flow Straight and Fast"; InstaFlow,
Liu et al. 2024; gnobitab/RectifiedFlow ImageGeneration/losses.py `get_mixup_loss_fn`, its
`reflow_t_schedule` / `rematching_t_schedule`).

The pairs are each row's cached (noise z0, teacher output x1): the teacher's ODE coupling, which
reflow straightens. The student is a flow model whatever the teacher's family. At

    x_s = (1 - s) x1 + s z0           (diffusers' flow convention, s = 1 is noise; denoiser timestep s T)

it predicts the velocity, and the target is the pair's difference:

    loss = d( v_student(x_s, s T),  z0 - x1 )            (the reference's x1 - z0, its time reversed)

t-schedules (`--reflow-t-schedule`): uniform, s ~ U[1e-3, 1] (reflow; the reference's eps = 1e-3);
t0, the noise end only (one-step distillation: the first point of the exported sampler at 1 step);
steps, the K points of the exported sampler at --num-student-steps (the reference's integer
schedule). A DDPM-family teacher's UNet is fine-tuned into this flow student and exported with
diffusers' DPMSolverMultistepScheduler (use_flow_sigmas, flow_prediction, first order: Euler on the
line), which StableDiffusionPipeline drives unchanged (sampling/schedulers.py). The reference's
lpips distance is not offered (no image decoder in phase two). Not done: a second reflow on the
student's own couplings.
"""

import torch

from shared.errors import DistillCacheError
from shared.schedule import NoiseSchedule
from student_train.config import REFLOW_T_SCHEDULES
from student_train.losses.distance import Distance

FIELDS = ("noise", "final_latents")
UNIFORM_EPS = 1e-3  # the reference's smallest time


def sampler_times(scheduler, num_steps: int, num_train_timesteps: int) -> list[float]:
    """The denoiser timesteps s T of a flow scheduler's points at K steps (its sigmas, not its int
    `timesteps`: DPMSolverMultistepScheduler rounds those down)."""
    scheduler.set_timesteps(num_steps)
    return [float(sigma) * num_train_timesteps for sigma in scheduler.sigmas[:-1]]


class ReflowLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        distance: Distance,
        t_schedule: str = "uniform",
        points: list[float] | None = None,
    ):
        if schedule.family != "flow":
            raise ValueError("reflow trains a flow student: pass its flow NoiseSchedule")
        if t_schedule not in REFLOW_T_SCHEDULES:
            raise DistillCacheError(
                f"unknown --reflow-t-schedule {t_schedule!r}; valid: {', '.join(REFLOW_T_SCHEDULES)}"
            )
        self.schedule = schedule  # the student's: alpha = 1 - s, sigma = s
        self.distance = distance
        self.t_schedule = t_schedule
        # t0 / steps: the exported sampler's points at 1 / K steps (`sampler_times`)
        self.points = torch.tensor(points or [float(schedule.num_train_timesteps)])

    def draw_times(self, random) -> torch.Tensor:
        """(B,) denoiser timesteps s T of this batch's points on the lines."""
        if self.t_schedule == "uniform":
            return random.uniform(UNIFORM_EPS, 1.0) * self.schedule.num_train_timesteps
        return self.points.to(random.device)[random.randint(0, len(self.points))]

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        noise, final = batch.fields["noise"], batch.fields["final_latents"]  # z0, x1: (B, C, H, W)
        t = self.draw_times(random)  # (B,)
        x_t = self.schedule.ddim_step(final, noise, t)  # alpha_t x1 + sigma_t z0: on the pair's line
        velocity = noise - final  # the pair's difference: d x_t / d s
        return self.distance(student.denoise(x_t, t, batch.cond), velocity)  # (B,)
