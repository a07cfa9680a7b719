"""What a denoiser costs, teacher and student side by side in one eval run: parameters, and the time
of one call, timed alternately (teacher, student, student, teacher, ...) on the same inputs so that a
busy machine slows both alike; the medians and their ratio are reported.

    cost = denoiser_cost(models, noise, cond, calls=20)
    cost["student"]["parameters"], cost["time_ratio"]      # student / teacher seconds per call
    cost_per_image(record, cost)                            # evaluations x parameters of a column

A denoiser call here is one forward of the batch given (the eval's first rows, cond half; a CFG
step makes one such call on twice the rows).
"""

import statistics
import time
from functools import partial

import torch

from student_train.students.denoiser import call_denoiser


def parameter_count(model: torch.nn.Module) -> int:
    """Every parameter of the denoiser (a LoRA student: base + adapter, as it runs)."""
    return sum(parameter.numel() for parameter in model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def seconds_per_call(calls: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """{name: median seconds} of zero-argument `calls`, run in alternating order `repeats` times each."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def denoiser_cost(models, noise: torch.Tensor, cond: dict, calls: int) -> dict:
    """Parameters and median time per call of the teacher's and the student's denoiser on `noise`
    [B, C, h, w] at a mid timestep with `cond`; `calls` = 0 skips the timing."""
    device = noise.device
    timesteps = torch.full((noise.shape[0],), 500.0, device=device)
    w = models.distill.get("sampling", {}).get("guidance_w")
    guidance_w = None if w is None else torch.full((noise.shape[0],), float(w), device=device)

    def call(model: torch.nn.Module, guidance_w=None) -> None:
        call_denoiser(model, noise, timesteps, cond, guidance_w)
        synchronize(device)

    cost = {
        "teacher": {"parameters": parameter_count(models.teacher)},
        "student": {"parameters": parameter_count(models.student)},
    }
    cost["parameter_ratio"] = cost["student"]["parameters"] / cost["teacher"]["parameters"]
    if calls > 0:
        seconds = seconds_per_call(
            {"teacher": partial(call, models.teacher), "student": partial(call, models.student, guidance_w)},
            calls,
        )
        for name in ("teacher", "student"):
            cost[name]["seconds_per_call"] = seconds[name]
        cost["time_ratio"] = seconds["student"] / seconds["teacher"]
        cost["timing"] = {"calls": calls, "batch": int(noise.shape[0]), "order": "alternating, median"}
    return cost


def cost_per_image(record: dict, cost: dict) -> dict:
    """The record's denoiser size and evaluations x parameters per image (teacher@S's = the reference
    of `cost_ratio`, computed by the caller)."""
    parameters = cost[record["model"]]["parameters"]
    return {"parameters": parameters, "evaluations_x_parameters": record["evaluations"] * parameters}
