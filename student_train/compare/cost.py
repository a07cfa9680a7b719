"""What the cache cost: the teacher's denoiser passes it holds, and their CPU seconds.

The store does not record how long phase one ran, so the seconds are measured here: the teacher's
denoiser timed on one capture-sized CFG batch (2 x `batch` samples, as `teacher-cache run` calls
it), median of a few passes, times the passes the store holds. That leaves out the VAE previews,
the feature hooks and the writes (phase one's summary line gives the whole; pass it as
`--cache-seconds`).

    cost = cache_cost(reader, teacher_denoiser, measured_seconds=None)   # {"teacher_passes", "seconds", ...}
"""

import statistics
import time

import torch

from student_train.students.denoiser import call_denoiser


def teacher_passes(reader) -> int:
    """Sample-passes of the teacher's denoiser behind the store: rows x steps x (2 with CFG)."""
    settings = reader.settings
    halves = 2 if settings.get("cfg", "out_uncond" in reader.fields) else 1
    return len(reader) * int(settings["num_inference_steps"]) * halves


@torch.no_grad()
def seconds_per_pass(denoiser, reader, batch: int = 64, repeats: int = 3) -> float:
    """Median seconds of one sample-pass of `denoiser`, timed on a CFG batch of the store's own
    latents and conditioning (both halves in one call, as the pipelines make it)."""
    from student_train.eval.teacher_baseline import map_tensors, read_conditioning
    from student_train.students.denoiser import concat_halves

    parameter = next(denoiser.parameters())
    rows = list(range(min(batch, len(reader))))
    noise = reader.read("noise", rows).to(parameter.device, parameter.dtype)
    x = torch.cat([noise, noise])  # (2B, C, H, W)
    halves = concat_halves(read_conditioning(reader, rows, "uncond"), read_conditioning(reader, rows, "cond"))
    halves = map_tensors(halves, lambda value: value.to(parameter.device, parameter.dtype))
    t = torch.full((x.shape[0],), float(reader.settings["timesteps"][0]), device=parameter.device)
    call_denoiser(denoiser, x, t, halves)  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call_denoiser(denoiser, x, t, halves)
        timings.append((time.perf_counter() - started) / x.shape[0])
    return statistics.median(timings)


def cache_cost(reader, denoiser, measured_seconds: float | None = None) -> dict:
    """The store's teacher passes and seconds: `measured_seconds` when known, else the estimate."""
    passes = teacher_passes(reader)
    per_pass = seconds_per_pass(denoiser, reader)
    return {
        "rows": len(reader),
        "teacher_passes": passes,
        "seconds_per_pass": per_pass,
        "estimated_seconds": passes * per_pass,
        "measured_seconds": measured_seconds,
        "seconds": measured_seconds if measured_seconds is not None else passes * per_pass,
    }
