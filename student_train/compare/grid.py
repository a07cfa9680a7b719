"""compare's grid.png: one row per model (the teacher, then each recipe), one column per step count;
each cell shows the same few prompts side by side, from the same cached noise. Rows are made one
model at a time, so only one student is in memory.

    grid = GridRows(eval_set, settings, steps=(1, 2, 4), count=4, device=device)
    rows = [grid.teacher(models)] + [grid.student(models, evaluated_steps) for each recipe]
    write_grid(out / "grid.png", rows, grid.column_titles, row_titles)
"""

import numpy as np
import torch

BLANK = 255  # a cell at a step count the model was not evaluated at


def distinct_prompt_rows(eval_set, count: int) -> list[int]:
    """The store rows of the first `count` distinct prompts of the eval set."""
    prompts = eval_set.reader.manifest.column("prompt").to_pylist()
    chosen, seen = [], set()
    for row in eval_set.rows:
        if len(chosen) < count and prompts[row] not in seen:
            chosen.append(row)
            seen.add(prompts[row])
    return chosen


class GridRows:
    """The cached noise and conditioning of a few rows; columns: each K of `steps`, then S (the
    store's own step count: the cache for the teacher, and students evaluated there)."""

    def __init__(self, eval_set, settings: dict, steps: tuple[int, ...], count: int, device):
        from student_train.eval.teacher_baseline import map_tensors, read_conditioning

        reader, self.rows = eval_set.reader, distinct_prompt_rows(eval_set, count)
        manifest = reader.manifest
        self.reader, self.settings, self.device = reader, settings, device
        self.steps, self.full_steps = tuple(steps), int(reader.settings["num_inference_steps"])
        self.noise = reader.read("noise", self.rows).float().to(device)  # (N, C, h, w)
        self.cond = map_tensors(read_conditioning(reader, self.rows, "cond"), lambda x: x.to(device))
        self.uncond = map_tensors(read_conditioning(reader, self.rows, "uncond"), lambda x: x.to(device))
        self.guidance = torch.tensor([float(manifest.column("guidance_scale")[r].as_py()) for r in self.rows])
        self.sample_ids = [str(manifest.column("sample_id")[r]) for r in self.rows]
        self.prompts = [str(manifest.column("prompt")[r]) for r in self.rows]
        self.column_titles = [f"{k} step{'s' * (k > 1)}" for k in self.steps] + [f"{self.full_steps} steps"]

    def cell(self, vae, latents: torch.Tensor) -> np.ndarray:
        """Latents (N, C, h, w) -> one cell: the N images side by side, uint8 [H, N * W, 3]."""
        from student_train.eval.models import decode

        return np.concatenate(list(decode(vae, latents)), axis=1)

    @torch.no_grad()
    def teacher(self, models) -> list[np.ndarray]:
        """The teacher with CFG (2 passes per step, DDIM trailing) at each K, and its cached output at S."""
        from student_train.eval.teacher_baseline import sample_with_cfg, teacher_scheduler

        row = [
            self.cell(
                models.vae,
                sample_with_cfg(
                    models.teacher,
                    teacher_scheduler(self.settings, "trailing"),
                    self.noise,
                    self.cond,
                    self.uncond,
                    self.guidance,
                    k,
                ),
            )
            for k in self.steps
        ]
        final = self.reader.read("final_latents", self.rows).float().to(self.device)
        return [*row, self.cell(models.vae, final)]

    @torch.no_grad()
    def student(self, models, evaluated: tuple[int, ...]) -> list[np.ndarray]:
        """The student at each column's step count it was evaluated at; a blank cell elsewhere."""
        from student_train.eval.generation import student_latents

        row = []
        for k in (*self.steps, self.full_steps):
            if k in evaluated:
                latents = student_latents(
                    models,
                    self.settings,
                    self.noise,
                    self.cond,
                    self.sample_ids,
                    k,
                    self.uncond,
                    self.guidance,
                )
                row.append(self.cell(models.vae, latents))
            else:
                row.append(None)
        filled = next(cell for cell in row if cell is not None)
        return [np.full_like(filled, BLANK) if cell is None else cell for cell in row]
