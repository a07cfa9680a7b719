"""What `student-train eval` reports: one record per column, the issue's targets, grid rows and the table.

A record pairs a column with teacher@S (PSNR and MSE of the pixels, MSE of the latents); with the
judge it also carries adherence and FD, and a first record for real digits of the same prompts.
The targets are issue 5's at 4 steps: student adherence >= teacher@S - 3 points, student PSNR >=
teacher@4 DDIM PSNR + 3 dB.

    records = score("val", columns, models.judge)
    targets = check_targets(records, "val", full_steps=50)    # [{"target": ..., "met": True}, ...]
    print(format_table(records))                              # Markdown, the README's eval table
"""

import numpy as np
import torch

from student_train.eval.generation import Columns
from student_train.eval.models import DigitJudge

TARGET_STEPS = 4
ADHERENCE_MARGIN = 3.0  # points: student@4 adherence >= teacher@S adherence - 3
PSNR_MARGIN_DB = 3.0  # student@4 paired PSNR >= teacher@4 paired PSNR + 3 dB


def score(set_name: str, columns: Columns, judge: DigitJudge | None, cost: dict | None = None) -> list[dict]:
    """One record per column: paired PSNR / MSE to teacher@S (pixels and latents), adherence, FD;
    with the judge, a first record for real digits of the same prompts (the reference). With `cost`
    (cost.denoiser_cost), each column's denoiser parameters, evaluations x parameters per image and
    their ratio to teacher@S's (`cost_ratio`), and the student's time per call relative to the teacher's."""
    from student_train.eval.cost import cost_per_image
    from student_train.eval.image_metrics import mse, psnr, to_unit_float

    reference = to_unit_float(columns.all_images(columns.reference))  # [N, H, W, 3] in [0, 1]
    records = [] if judge is None else [judge.real_record(set_name, columns.prompts)]
    reference_cost = cost_per_image(columns.kinds[columns.reference], cost) if cost else None
    for label in columns.images:
        images = columns.all_images(label)
        record = {"set": set_name, "column": label, **columns.kinds[label], "samples": len(images)}
        if label != columns.reference:
            record["psnr_db"] = float(psnr(to_unit_float(images), reference).mean())
            record["pixel_mse"] = float(mse(to_unit_float(images), reference).mean())
            record["latent_mse"] = float(torch.cat(columns.latent_mse[label]).mean())
        if cost:
            record.update(cost_per_image(record, cost))
            record["cost_ratio"] = (
                record["evaluations_x_parameters"] / reference_cost["evaluations_x_parameters"]
            )
            if "time_ratio" in cost:
                record["time_ratio"] = cost["time_ratio"] if record["model"] == "student" else 1.0
        records.append({**record, **(judge.scores(images, columns.prompts) if judge else {})})
    return records


def find_record(
    records: list[dict], set_name: str, model: str, steps: int, sampler: str | tuple[str, ...] | None = None
) -> dict | None:
    """The first record of (set, model, steps), with the sampler (or one of the samplers) if given."""
    samplers = (sampler,) if isinstance(sampler, str) else sampler
    for record in records:
        if (record["set"], record["model"], record["steps"]) == (set_name, model, steps) and (
            samplers is None or record["sampler"] in samplers
        ):
            return record
    return None


def check_targets(records: list[dict], set_name: str, full_steps: int) -> list[dict]:
    """Issue 5's targets at 4 steps: adherence >= teacher@S - 3 points, PSNR >= teacher@4 (DDIM or
    flow Euler) + 3 dB."""
    student = find_record(records, set_name, "student", TARGET_STEPS)
    teacher = find_record(records, set_name, "teacher", TARGET_STEPS, ("ddim", "euler"))
    reference = find_record(records, set_name, "teacher", full_steps, "cache")
    if student is None or teacher is None:
        return []
    targets = [
        {
            "set": set_name,
            "target": f"student@{TARGET_STEPS} PSNR >= teacher@{TARGET_STEPS} PSNR + {PSNR_MARGIN_DB:g} dB",
            "value": student["psnr_db"],
            "threshold": teacher["psnr_db"] + PSNR_MARGIN_DB,
        }
    ]
    if "adherence" in student:
        targets.append(
            {
                "set": set_name,
                "target": f"student@{TARGET_STEPS} adherence >= teacher@{full_steps} - {ADHERENCE_MARGIN:g} points",
                "value": student["adherence"],
                "threshold": reference["adherence"] - ADHERENCE_MARGIN,
            }
        )
    return [{**target, "met": bool(target["value"] >= target["threshold"])} for target in targets]


def grid_rows(columns: Columns, count: int) -> tuple[list[list[np.ndarray]], list[str]]:
    """Up to `count` rows with distinct prompts: [teacher@S, teacher@K, student@K, ...] images each."""
    chosen, seen = [], set()
    for index, prompt in enumerate(columns.prompts):
        if len(chosen) < count and prompt not in seen:
            chosen.append(index)
            seen.add(prompt)
    images = {label: columns.all_images(label) for label in columns.images}
    return [[images[label][i] for label in images] for i in chosen], [columns.prompts[i] for i in chosen]


def format_table(records: list[dict]) -> str:
    """The records as a Markdown table (the README's eval table)."""

    def number(record: dict, key: str, digits: int) -> str:
        return f"{record[key]:.{digits}f}" if key in record else "-"

    def millions(record: dict) -> str:
        return f"{record['parameters'] / 1e6:.3f}" if "parameters" in record else "-"

    lines = [
        "| set | column | params (M) | time / call | evals / image | evals x params | PSNR (dB) | pixel MSE "
        "| latent MSE | adherence (%) | FD |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['set']} | {r['column']} | {millions(r)} | {number(r, 'time_ratio', 2)} | "
            f"{r.get('evaluations', '-')} | {number(r, 'cost_ratio', 3)} | {number(r, 'psnr_db', 2)} | "
            f"{number(r, 'pixel_mse', 5)} | {number(r, 'latent_mse', 4)} | {number(r, 'adherence', 1)} | "
            f"{number(r, 'fd', 2)} |"
        )
    return "\n".join(lines)
