"""blockkd: BK-SDM's knowledge distillation (Kim et al. 2023, "BK-SDM: A Lightweight, Fast, and Cheap
Version of Stable Diffusion"; Nota-NetsPresso/BK-SDM src/kd_train_text_to_image.py), with every
teacher pass replaced by the cache.

Per sample, one of the store's feature steps n (x_t = trajectory[n], t = timesteps[n]; any cached
step of a store without features, with --lambda-feat 0); the student runs on both CFG halves at
once, and the loss is

    lambda_task * d(eps_hat(guided student output), eps_step)                      task
  + lambda_out  * (d(student_cond, out_cond) + d(student_uncond, out_uncond)) / 2   output KD
  + lambda_feat * sum over blocks d(student block output, features.<block>[n])      feature KD (cond half)

BK-SDM's defaults are lambda 1, 1, 1 (segmind/distill-sd: 0.5 / 0.5) and a plain MSE; d here is
`--loss` (l2 = BK-SDM's MSE).

- task: BK-SDM regresses the real noise that made x_t from a real image. The cache has no real
  image, but it holds where the teacher's sampler went: eps_step is the noise implied by the point
  and the next cached point x_s (s = the next time of the grid): x_t = alpha_t x0 + sigma_t eps and
  x_s = alpha_s x0 + sigma_s eps solved for eps (Salimans & Ho's algebra, progressive.x_target).
  The trajectory was made by the *guided* sampler, so the student's outputs are guided with the
  row's guidance scale (diffusers' u + g (c - u)) before the comparison: the term is what a CFG
  sampler feeds on, the cond - uncond difference weighted by g. For a DDIM teacher it is exactly
  zero for the teacher itself (tested). Not the final latents: the eps implied by x_t and the
  teacher's final output is the endpoint of the whole ODE, which the teacher's own guided eps
  misses by 0.03-0.15 (mean square, embedded teacher) against a cond - uncond difference of
  0.002-0.02 (0.15 at the last step, where the final latents keep the noise of sigma_end = 0.029).
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
from student_train.losses.guided import guided_output
from student_train.losses.progressive import x_target
from student_train.students.block_outputs import BlockOutputs, aligned_blocks
from student_train.students.denoiser import concat_halves, nest_conditioning

POINT_FIELDS = ("trajectory", "out_cond", "out_uncond", "uncond.*")


def fields_read(lambda_feat: float) -> tuple[str, ...]:
    """The store fields blockkd reads: the points and both halves, plus the features if that term is on."""
    return (*POINT_FIELDS, *(("features.*",) if lambda_feat > 0 else ()))


class BlockKdLoss:
    def __init__(
        self,
        schedule: NoiseSchedule,
        grid: list[float],
        feature_steps: list[int],
        feature_modules: list[str],
        prediction_type: str,
        distance: Distance,
        lambda_task: float = 1.0,
        lambda_out: float = 1.0,
        lambda_feat: float = 1.0,
    ):
        self.schedule = schedule
        self.grid = torch.tensor(grid, dtype=torch.float32)  # (S + 1,) time of every trajectory point
        # (F,) trajectory indices of the points: the feature steps (every cached step when there are none)
        self.feature_steps = torch.tensor(list(feature_steps) or range(len(grid) - 1))
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
            student.denoise(first, self.grid[:1].to(first.device), slice_conditioning(batch.cond, 1))
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
        grid = self.grid.to(device)
        x_t, t = pick_steps(trajectory, n), grid[n]
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
            eps_step = task_target(self.schedule, x_t, t, pick_steps(trajectory, n + 1), grid[n + 1])
            loss = loss + self.lambda_task * self.distance(eps_hat, eps_step)
        if self.lambda_feat > 0:
            feature_kd = sum(
                self.distance(block[:batch_size], pick_steps(fields[FEATURE_PREFIX + name], feature_index))
                for name, block in blocks.items()
            )
            loss = loss + self.lambda_feat * feature_kd
        return loss  # (B,)


def task_target(schedule: NoiseSchedule, x_t, t, x_s, s) -> torch.Tensor:
    """The eps of the deterministic step from x_t (time t) to x_s (time s): the one eps that, with
    one x0, puts both points on alpha x0 + sigma eps. (B, C, H, W)."""
    x0 = x_target(x_t, *schedule.alpha_sigma(t), x_s, *schedule.alpha_sigma(s))
    _, eps_step = schedule.to_x0_eps(x0, x_t, t, "sample")
    return eps_step


def slice_conditioning(cond: dict, count: int) -> dict:
    """The first `count` rows of nested conditioning kwargs."""
    return {
        key: slice_conditioning(value, count) if isinstance(value, dict) else value[:count]
        for key, value in cond.items()
    }
