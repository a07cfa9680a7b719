"""direct: Direct Distill (DiffSynth-Studio, diffsynth/diffusion/loss.py `DirectDistillLoss`).

The student samples K steps at cfg 1 from the teacher's cached initial noise with the cached
conditioning; the loss is the distance between its final latents and the teacher's cached
many-step CFG latents, with gradients through every step. DiffSynth compares re-encoded JPEGs;
here the exact latents. `checkpoint_steps` recomputes each step's activations in the backward pass
(memory of one step instead of K).
"""

import torch

from shared.schedule import NoiseSchedule
from student_train.losses.distance import Distance
from student_train.sampling import sample

FIELDS = ("noise", "final_latents")


class DirectLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        timesteps: list[float],
        prediction_type: str,
        distance: Distance,
        checkpoint_steps: bool = False,
    ):
        self.schedule = schedule
        self.timesteps = timesteps  # the student's K sampling timesteps
        self.prediction_type = prediction_type
        self.distance = distance
        self.checkpoint_steps = checkpoint_steps

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        noise = batch.fields["noise"]  # (B, C, H, W)
        student_latents = sample(
            student.denoise,
            self.schedule,
            noise,
            batch.cond,
            self.timesteps,
            self.prediction_type,
            sampler="ddim",
            checkpoint_steps=self.checkpoint_steps,
        )
        return self.distance(student_latents, batch.fields["final_latents"])  # (B,)
