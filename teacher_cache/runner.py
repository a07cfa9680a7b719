"""`run(config)`: phase one end to end. Prompts -> jobs -> teacher -> capture -> store.

    python -m teacher_cache run --teacher PATH_OR_ID --prompts FILE --out STORE
    accelerate launch --num_processes 2 -m teacher_cache run ...      # each rank its slice and writer

Read top to bottom: validate everything (settings, prompt file, teacher, feature globs) before
anything is written; capture one probe sample to learn the field shapes and the timesteps; open
this process's writer (the store refuses other settings); skip committed rows (resume); capture
the rest in batches, committing each batch's finite rows; print a summary.
"""

import sys
import time
from dataclasses import dataclass

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from shared.store import StoreReader, StoreWriter, sample_id_for
from teacher_cache.batch_capture import CapturedBatch, capture_batch, latent_geometry
from teacher_cache.capture import CaptureHooks
from teacher_cache.config import CaptureConfig, check_config
from teacher_cache.feature_modules import match_feature_modules
from teacher_cache.prompts import CaptureJob, read_jobs
from teacher_cache.store_layout import field_specs, store_settings
from teacher_cache.teacher_loading import load_teacher, resolve_dtype


@dataclass(frozen=True)
class CaptureSummary:
    written: int  # rows this process committed
    skipped: int  # rows of its slice already in the store
    rejected: int  # rows with NaN / Inf in the teacher's output, not committed
    bytes_written: int  # uncompressed bytes of the committed arrays
    seconds: float


def slice_for_rank(items: list, rank: int, world: int) -> list:
    """This rank's share of the full job list (stable across runs, whatever is already committed)."""
    return items[rank::world]


def guidance_batches(jobs: list[tuple[str, CaptureJob]], batch_size: int):
    """Consecutive batches of at most `batch_size` jobs sharing one guidance scale, in job order."""
    by_guidance: dict[float, list] = {}
    for item in jobs:
        by_guidance.setdefault(item[1].guidance_scale, []).append(item)
    for group in by_guidance.values():
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


@dataclass
class Tally:
    written: int = 0
    rejected: int = 0
    bytes_written: int = 0

    def add(self, other: "Tally") -> None:
        self.written += other.written
        self.rejected += other.rejected
        self.bytes_written += other.bytes_written


def commit_finite(
    writer: StoreWriter, jobs: list[tuple[str, CaptureJob]], batch: CapturedBatch, steps: int
) -> Tally:
    """Commit the batch's finite rows in one commit; report the others on stderr."""
    keep = [index for index in range(len(jobs)) if bool(batch.finite[index])]
    for index in range(len(jobs)):
        if index not in keep:
            sample_id, job = jobs[index]
            tqdm.write(
                f"teacher-cache: NaN/Inf in the teacher's output for {job.prompt!r} seed {job.seed} "
                f"(sample {sample_id}); row not committed",
                file=sys.stderr,
            )
    if not keep:
        return Tally(rejected=len(jobs))
    rows = [
        {
            "sample_id": jobs[index][0],
            "prompt": jobs[index][1].prompt,
            "negative_prompt": jobs[index][1].negative_prompt,
            "seed": jobs[index][1].seed,
            "guidance_scale": jobs[index][1].guidance_scale,
            "num_inference_steps": steps,
        }
        for index in keep
    ]
    arrays = {name: array[keep] for name, array in batch.arrays.items()}
    writer.commit(rows, arrays)
    return Tally(len(keep), len(jobs) - len(keep), sum(array.nbytes for array in arrays.values()))


def run(config: CaptureConfig) -> CaptureSummary:
    started = time.perf_counter()
    # 1. Validate: settings, prompt file, teacher, feature globs. Nothing is written before this passes.
    check_config(config)
    jobs = read_jobs(config.prompts, config.seeds_per_prompt, config.guidance, config.negative_prompt)
    jobs = jobs[: config.limit] if config.limit else jobs
    state = PartialState()
    device = state.device if config.device == "auto" else torch.device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    teacher = load_teacher(config.teacher, config.revision, device, dtype)
    feature_modules = (
        match_feature_modules(teacher.denoiser, config.features) if "features" in config.fields else {}
    )
    geometry = latent_geometry(teacher, config.height, config.width)
    identified = [
        (
            sample_id_for(teacher.fingerprint, job.prompt, job.negative_prompt, job.seed, job.guidance_scale),
            job,
        )
        for job in jobs
    ]
    mine = slice_for_rank(identified, state.process_index, state.num_processes)
    capture = dict(steps=config.steps, groups=config.fields, preview_size=config.preview_size)
    feature_dtype = getattr(torch, config.feature_dtype)

    with CaptureHooks(
        teacher.denoiser, feature_modules, config.resolved_feature_steps, feature_dtype
    ) as hooks:
        # 2. Probe: one sample (not committed: the first commit's size sets the store's shard size)
        #    fixes the field shapes and the timesteps.
        probe_job = (mine or identified)[0][1]
        probe = capture_batch(teacher, hooks, [probe_job], geometry, **capture)
        settings = store_settings(
            config,
            pipe=teacher.pipe,
            denoiser_name=teacher.denoiser_name,
            record=probe.record,
            latent_shape=geometry.latent_shape,
            image_size=geometry.image_size,
            cfg=probe_job.guidance_scale > 1.0,
            compute_dtype=dtype,
        )
        # 3. This process's writer; the main process creates the store first.
        with state.main_process_first():
            writer = StoreWriter(
                config.out,
                fingerprint=teacher.fingerprint,
                settings=settings,
                fields=field_specs(probe.arrays),
            )
        pending = [item for item in mine if item[0] not in writer.committed_ids]
        skipped = len(mine) - len(pending)
        tally = Tally()
        bar = tqdm(
            total=len(pending),
            unit="sample",
            desc=f"capture rank {state.process_index}" if state.num_processes > 1 else "capture",
            position=state.process_index,
            disable=not config.progress,
            dynamic_ncols=True,
        )
        with bar:
            # 4. Capture in batches; each batch's finite rows become visible in one commit.
            for batch_jobs in guidance_batches(pending, config.batch_size):
                batch = capture_batch(teacher, hooks, [job for _, job in batch_jobs], geometry, **capture)
                tally.add(commit_finite(writer, batch_jobs, batch, config.steps))
                bar.update(len(batch_jobs))
    return CaptureSummary(
        tally.written, skipped, tally.rejected, tally.bytes_written, time.perf_counter() - started
    )


def print_summary(config: CaptureConfig, summary: CaptureSummary) -> None:
    """The closing lines: this process's counts, then (main process, after all ranks) the store's totals."""
    state = PartialState()
    rank = f"rank {state.process_index}: " if state.num_processes > 1 else ""
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    print(
        f"teacher-cache: {rank}{summary.written} samples written, {summary.skipped} already in the store, "
        f"{summary.rejected} rejected (NaN/Inf); {summary.bytes_written / 1e6:.1f} MB of arrays in "
        f"{summary.seconds:.1f} s ({rate:.2f} samples/s)"
    )
    state.wait_for_everyone()
    if state.is_main_process:
        reader = StoreReader(config.out)
        print(
            f"teacher-cache: {config.out}: {reader.manifest.num_rows} samples, {reader.nbytes / 1e6:.1f} MB on disk"
        )
