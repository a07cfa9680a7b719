"""blockkd: BK-SDM's knowledge distillation (Kim et al. 2023, "BK-SDM: A Lightweight, Fast, and Cheap
Version of Stable Diffusion"; Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py), with every
teacher pass replaced by the cache.

Per sample, one of the store's feature steps n (x_t = trajectory[n], t = timesteps[n]; any cached
step of a store without features, with --lambda-feat 0); the student
runs on both CFG halves at once, and the loss is

    lambda_task * d(eps_hat(guided student output), eps_target)                    task
  + lambda_out  * (d(student_cond, out_cond) + d(student_uncond, out_uncond)) / 2   output KD
  + lambda_feat * sum over blocks d(student block output, features.<block>[n])      feature KD (cond half)

BK-SDM's defaults are lambda 1, 1, 1 (segmind/distill-sd: 0.5 / 0.5) and a plain MSE; d here is
`--loss` (l2 = BK-SDM's MSE).

- task: BK-SDM regresses the real noise that made x_t from a real image. The cache has no real
  image; the teacher's final latents x0 stand for it, and eps_target = (x_t - alpha_t x0) / sigma_t
  is the noise that puts x_t exactly on x_t = alpha_t x0 + sigma_t eps_target. x0 came from the
  teacher's *guided* sampler, so the student's outputs are guided with the row's guidance scale
  (diffusers' u + g (c - u)) before the comparison. For the teacher itself the term is zero where
  its guided step lands on x0 (the last step of a sampler whose final alpha is 1) and small before.
- output KD: BK-SDM compares the cond output only (its student samples with CFG from the
  teacher's uncond ability); here the uncond half is cached too and distilled alongside, since a
  pruned student has to relearn it.
- feature KD: the student's block outputs (forward hooks, named as phase one names the teacher's:
  students/block_outputs.py) against the cached `features.<block>` of the cond half; blocks the
  student lacks are skipped; a block whose output has another shape is refused.
"""

import torch

from shared.errors import DistillCacheError
from shared.module_outputs import FEATURE_PREFIX
from shared.schedule import NoiseSchedule
from student_train.data.points import pick_steps
from student_train.losses.distance import Distance
from student_train.students.block_outputs import BlockOutputs, aligned_blocks
from student_train.students.denoiser import concat_halves, guided_output, nest_conditioning

POINT_FIELDS = ("trajectory", "out_cond", "out_uncond", "uncond.*")


def fields_read(lambda_task: float, lambda_feat: float) -> tuple[str, ...]:
    """The store fields blockkd reads: the points and both halves, plus what the task / feature terms need."""
    return (
        *POINT_FIELDS,
        *(("final_latents",) if lambda_task > 0 else ()),
        *(("features.*",) if lambda_feat > 0 else ()),
    )


class BlockKdLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        timesteps: list[float],
        feature_steps: list[int],
        feature_modules: list[str],
        prediction_type: str,
        distance: Distance,
        lambda_task: float = 1.0,
        lambda_out: float = 1.0,
        lambda_feat: float = 1.0,
    ):
        self.schedule = schedule
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32)  # (S,) the teacher's timesteps
        # (F,) trajectory indices of the points: the feature steps (every cached step when there are none)
        self.feature_steps = torch.tensor(list(feature_steps) or range(len(timesteps)))
        self.feature_modules = list(feature_modules) if lambda_feat > 0 else []
        self.prediction_type = prediction_type
        self.distance = distance
        self.lambda_task, self.lambda_out, self.lambda_feat = lambda_task, lambda_out, lambda_feat

    def block_pairs(self, student) -> dict[str, str]:
        """{student module: teacher module} of the cached features the student has; refused if none."""
        pairs = aligned_blocks(student.model, self.feature_modules, student.pruning)
        if self.feature_modules and not pairs:
            raise DistillCacheError(
                f"none of the store's features ({', '.join(self.feature_modules)}) has a counterpart in the "
                "student; cache block outputs (--features 'down_blocks.*,mid_block,up_blocks.*') or pass --lambda-feat 0"
            )
        return pairs

    def check_student(self, student, batch) -> None:
        """Refuse, before training, a student whose block outputs differ in shape from the cached ones."""
        pairs = self.block_pairs(student)
        with torch.no_grad(), BlockOutputs(student.model, pairs) as outputs:
            first = batch.fields["trajectory"][:1, 0]
            student.denoise(first, self.timesteps[:1].to(first.device), slice_conditioning(batch.cond, 1))
        wrong = [
            f"{student_name} {tuple(outputs[teacher_name].shape[1:])} vs {teacher_name} "
            f"{tuple(batch.fields[FEATURE_PREFIX + teacher_name].shape[2:])}"
            for student_name, teacher_name in pairs.items()
            if outputs[teacher_name].shape[1:] != batch.fields[FEATURE_PREFIX + teacher_name].shape[2:]
        ]
        if wrong:
            raise DistillCacheError(
                f"student block outputs differ in shape from the cached teacher features: {'; '.join(wrong)}; "
                "blockkd needs the same block layout (use --lambda-feat 0 for output distillation only)"
            )

    def __call__(self, student, batch, random, step: int) -> torch.Tensor:
        fields = batch.fields
        trajectory = fields["trajectory"]  # (B, S + 1, C, H, W)
        batch_size, device = trajectory.shape[0], trajectory.device
        feature_index = random.randint(0, len(self.feature_steps))  # (B,) which feature step
        n = self.feature_steps.to(device)[feature_index]  # (B,) trajectory index
        x_t, t = pick_steps(trajectory, n), self.timesteps.to(device)[n]
        uncond = nest_conditioning(
            {name[len("uncond.") :]: value for name, value in fields.items() if name.startswith("uncond.")}
        )

        # The student on both halves at once (cond first), its block outputs kept by the hooks.
        with BlockOutputs(student.model, self.block_pairs(student)) as blocks:
            output = student.denoise(
                torch.cat([x_t, x_t]), torch.cat([t, t]), concat_halves(batch.cond, uncond)
            )  # (2B, C, H, W)
        student_cond, student_uncond = output.float().chunk(2)

        loss = torch.zeros(batch_size, device=device)
        if self.lambda_out > 0:
            out_cond, out_uncond = pick_steps(fields["out_cond"], n), pick_steps(fields["out_uncond"], n)
            output_kd = (
                self.distance(student_cond, out_cond) + self.distance(student_uncond, out_uncond)
            ) / 2
            loss = loss + self.lambda_out * output_kd
        if self.lambda_task > 0:
            guided = guided_output(student_uncond, student_cond, batch.guidance_scale)
            _, eps_hat = self.schedule.to_x0_eps(guided, x_t, t, self.prediction_type)
            loss = loss + self.lambda_task * self.distance(
                eps_hat, task_target(self.schedule, x_t, t, fields)
            )
        if self.lambda_feat > 0:
            feature_kd = sum(
                self.distance(block[:batch_size], pick_steps(fields[FEATURE_PREFIX + name], feature_index))
                for name, block in blocks.items()
            )
            loss = loss + self.lambda_feat * feature_kd
        return loss  # (B,)


def task_target(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, fields: dict) -> torch.Tensor:
    """eps_target = (x_t - alpha_t x0) / sigma_t with x0 = the cached final latents: (B, C, H, W)."""
    _, eps_target = schedule.to_x0_eps(fields["final_latents"], x_t, t, "sample")
    return eps_target


def slice_conditioning(cond: dict, count: int) -> dict:
    """The first `count` rows of nested conditioning kwargs."""
    return {
        key: slice_conditioning(value, count) if isinstance(value, dict) else value[:count]
        for key, value in cond.items()
    }
