"""`run(config)`: phase one end to end. Prompts -> jobs -> teacher -> capture -> store.

    python -m teacher_cache run --teacher PATH_OR_ID --prompts FILE --out STORE
    accelerate launch --num_processes 2 -m teacher_cache run ...      # each rank its slice and writer
    (CPU only: accelerate launch --multi_gpu --num_processes 2 ..., which starts them via torchrun)

Read top to bottom: validate everything (settings, prompt file or --images dataset, teacher, feature
globs) before anything is written; skip committed rows (resume); capture the first batch, which fixes the field
shapes and the timesteps; open this process's writer (the store refuses other settings); capture
the rest in batches in this process's own order (teacher_cache/job_queue.py), skipping before each
batch the jobs other writers of the store committed meanwhile, and committing each batch's new,
finite rows; print a summary.
"""

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from shared.errors import DistillCacheError
from shared.processes import process_state
from shared.store import StoreReader, StoreWriter, committed_manifest, sample_ids_for
from shared.store.claims import WriterClaims
from shared.store.compaction import compact_store
from shared.store.manifest import ManifestFiles
from shared.store.paths import StoreLocation
from shared.store.writer import new_writer_id
from shared.teacher import load_teacher, recommended_guidance, resolve_dtype
from teacher_cache.batch_capture import CapturedBatch, capture_batch, latent_geometry
from teacher_cache.capture import CaptureHooks, check_first_order
from teacher_cache.commit_queue import CommitQueue
from teacher_cache.config import BUILTIN_DIGITS, FALLBACK_GUIDANCE, CaptureConfig, check_config
from teacher_cache.feature_modules import match_feature_modules
from teacher_cache.image_source import check_digit_jobs, folder_jobs
from teacher_cache.job_queue import JobQueue, without_committed
from teacher_cache.prompts import CaptureJob, read_jobs
from teacher_cache.store_layout import dtype_name, field_specs, store_settings


@dataclass(frozen=True)
class CaptureSummary:
    written: int  # rows this process committed
    skipped: int  # rows of its slice already in the store
    rejected: int  # rows with NaN / Inf in the teacher's output, not committed
    dropped: int  # rows computed here but committed meanwhile by another writer of the store
    bytes_written: int  # uncompressed bytes of the committed arrays
    seconds: float


@dataclass(frozen=True)
class Sample:
    sample_id: str  # job_samples: the dedupe key
    job: CaptureJob


def job_samples(fingerprint: dict, jobs: list[CaptureJob]) -> list[Sample]:
    """Each job with its row's id: teacher, prompt, negative prompt, seed, guidance and, for a row made
    from an --images file, that file (job.image, the source key: two images with one caption are two
    samples). One pass over the jobs (shared.store.sample_ids_for)."""
    keys = ((job.prompt, job.negative_prompt, job.seed, job.guidance_scale, job.image) for job in jobs)
    return [Sample(sample_id, job) for sample_id, job in zip(sample_ids_for(fingerprint, keys), jobs)]


def pending_samples(
    url: str, fingerprint: dict, jobs: list[CaptureJob], rank: int, world: int
) -> tuple[list[Sample], list[Sample], list[Sample], ManifestFiles | None]:
    """(every job's Sample, this rank's slice, the part of it not committed yet, the store's manifest as
    read for that check: None when there is no store yet). The manifest goes on to this process's
    StoreWriter, which then reads only the files published since: a resume reads the manifest once."""
    samples = job_samples(fingerprint, jobs)
    mine = slice_for_rank(samples, rank, world)
    manifest = committed_manifest(url)
    if manifest is None:
        return samples, mine, list(mine), None
    done = manifest.sample_ids().contains_many([sample.sample_id for sample in mine])  # vectorised
    return (
        samples,
        mine,
        [sample for sample, committed in zip(mine, done.tolist()) if not committed],
        manifest,
    )


@dataclass
class Tally:
    written: int = 0
    rejected: int = 0
    dropped: int = 0
    bytes_written: int = 0

    def add(self, other: "Tally") -> None:
        self.written += other.written
        self.rejected += other.rejected
        self.bytes_written += other.bytes_written


def slice_for_rank(samples: list[Sample], rank: int, world: int) -> list[Sample]:
    """This rank's share of the full job list (stable across runs, whatever is already committed)."""
    return samples[rank::world]


def commit_finite(
    writer: StoreWriter, samples: list[Sample], batch: CapturedBatch, steps: int, wanted: set[str]
) -> Tally:
    """Commit, in one commit, the batch's rows that are `wanted` and finite; report non-finite ones."""
    keep = []
    for index, sample in enumerate(samples):
        if sample.sample_id not in wanted:
            continue
        if bool(batch.finite[index]):
            keep.append(index)
        else:
            tqdm.write(
                f"teacher-cache: NaN/Inf in the teacher's output for {sample.job.prompt!r} seed "
                f"{sample.job.seed} (sample {sample.sample_id}); row not committed",
                file=sys.stderr,
            )
    considered = sum(sample.sample_id in wanted for sample in samples)
    if not keep:
        return Tally(rejected=considered)
    rows = [
        {
            "sample_id": samples[index].sample_id,
            "prompt": samples[index].job.prompt,
            "negative_prompt": samples[index].job.negative_prompt,
            "seed": samples[index].job.seed,
            "guidance_scale": samples[index].job.guidance_scale,
            "num_inference_steps": steps,
            **({"image": samples[index].job.image} if samples[index].job.image else {}),
        }
        for index in keep
    ]
    arrays = {name: array[keep] for name, array in batch.arrays.items()}
    writer.commit(rows, arrays)
    return Tally(
        written=len(keep),
        rejected=considered - len(keep),
        bytes_written=sum(array.nbytes for array in arrays.values()),
    )


@contextmanager
def claims_released(claims: WriterClaims):
    """Remove this writer's claim when the block ends, however it ends."""
    try:
        yield claims
    finally:
        claims.release()


@contextmanager
def torch_threads(count: int):
    """torch's CPU thread count set to `count` inside the block (0: unchanged), restored after."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run(config: CaptureConfig) -> CaptureSummary:
    """Capture every job of `config` not yet in its store; see the module docstring."""
    with torch_threads(config.threads):
        return capture_jobs(config)


def capture_jobs(config: CaptureConfig) -> CaptureSummary:
    started = time.perf_counter()
    # 1. Validate: settings, prompt file, teacher, feature globs. Nothing is written before this passes.
    config = with_resolved_guidance(config)
    check_config(config)
    StoreLocation.open(config.out).check_writable()  # a file, a read-only folder, a missing bucket
    from_folder = bool(config.images) and config.images != BUILTIN_DIGITS
    if not from_folder:
        jobs = read_jobs(config.prompts, config.seeds_per_prompt, config.guidance, config.negative_prompt)
    state = process_state(config.device)
    device = state.device if config.device == "auto" else torch.device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    teacher = load_teacher(config.teacher, config.revision, device, dtype)
    check_first_order(teacher.pipe.scheduler)
    wants_features = "features" in config.fields
    feature_modules = match_feature_modules(teacher.denoiser, config.features) if wants_features else {}
    geometry = latent_geometry(teacher, config.height, config.width)
    if from_folder:  # every image opened and checked: a bad one is one line, before anything is written
        jobs = folder_jobs(config.images, geometry.image_size, config.guidance, config.negative_prompt)
    elif config.images == BUILTIN_DIGITS:
        check_digit_jobs(jobs, geometry.image_size)
    jobs = jobs[: config.limit] if config.limit else jobs
    fingerprint = teacher.fingerprint
    samples, mine, pending, manifest = pending_samples(
        config.out, fingerprint, jobs, state.process_index, state.num_processes
    )
    if state.is_main_process:
        print(
            f"teacher-cache: {fingerprint['pipeline_class']} from {teacher.origin['source']} on {device} ({dtype_name(dtype)}); "
            f"{len(samples)} jobs ({len(mine)} on this rank), {config.steps} steps, guidance {config.guidance:g}, "
            f"fields {','.join(config.fields)} -> {config.out}",
            flush=True,
        )
    # this process's own order (other writers of the store start elsewhere), re-checked before each
    # batch against what is committed and what other writers claim to be computing
    queue = JobQueue(pending, config.batch_size, seed=int.from_bytes(os.urandom(8), "big"))
    claims = WriterClaims(config.out, new_writer_id())  # released (removed) however the run ends
    capture = dict(
        steps=config.steps,
        groups=config.fields,
        preview_size=config.preview_size,
        points_per_sample=config.noised_points_per_sample,
        images=config.images,
    )
    feature_steps, feature_dtype = config.resolved_feature_steps, getattr(torch, config.feature_dtype)
    with (
        claims_released(claims),
        CaptureHooks(teacher.denoiser, feature_modules, feature_steps, feature_dtype) as hooks,
    ):
        # 2. The first batch doubles as the probe that fixes field shapes and timesteps (the store
        #    needs them before its first commit); when every job is done, one job is probed and dropped.
        first = queue.next_batch(set(), claims.others())
        if first:
            claims.claim([sample.sample_id for sample in first])
        first = first or samples[:1]
        first_batch = capture_batch(
            teacher, hooks, [s.job for s in first], [s.sample_id for s in first], geometry, **capture
        )
        settings = store_settings(
            config,
            pipe=teacher.pipe,
            denoiser_name=teacher.denoiser_name,
            record=first_batch.record,
            latent_shape=geometry.latent_shape,
            image_size=geometry.image_size,
            cfg=first[0].job.guidance_scale > 1.0,
            compute_dtype=dtype,
        )
        # 3. This process's writer, its own group (writes nothing until its first commit; refuses a
        #    store made with another teacher, other settings or other fields).
        writer = StoreWriter(
            config.out,
            writer_id=claims.writer_id,
            fingerprint=teacher.fingerprint,
            teacher=teacher.origin,
            settings=settings,
            fields=field_specs(first_batch.arrays),
            manifest=manifest,  # read for the resume check above: continued, not read again
        )
        tally = Tally()
        bar = tqdm(
            total=len(pending),
            unit="sample",
            desc=f"capture rank {state.process_index}" if state.num_processes > 1 else "capture",
            position=state.process_index,
            disable=not config.progress,
            dynamic_ncols=True,
        )

        def on_committed(result: Tally) -> None:
            tally.add(result)
            bar.update(result.written + result.rejected)

        def submit(commits: CommitQueue, batch_samples: list[Sample], batch: CapturedBatch) -> None:
            """Commit the batch's rows that no writer committed while it was computed (the probe of a
            store that holds every job already commits nothing)."""
            fresh = without_committed(batch_samples, writer.committed_ids) if pending else []
            dropped = len(batch_samples) - len(fresh) if pending else 0
            tally.dropped += dropped
            bar.update(dropped)
            wanted = {sample.sample_id for sample in fresh}
            commits.submit(commit_finite, writer, batch_samples, batch, config.steps, wanted)

        # 4. Capture in batches; each batch's new, finite rows become visible in one commit, made in
        #    the background while the next batch runs. Before each batch, jobs that any writer of the
        #    store committed meanwhile are skipped.
        with bar, CommitQueue(on_done=on_committed) as commits:
            submit(commits, first, first_batch)
            committing = first
            while batch_samples := queue.next_batch(writer.committed_ids, claims.others()):
                # claimed: the batch computed now and the one still committing
                claims.claim([sample.sample_id for sample in (*batch_samples, *committing)])
                batch = capture_batch(
                    teacher,
                    hooks,
                    [s.job for s in batch_samples],
                    [s.sample_id for s in batch_samples],
                    geometry,
                    **capture,
                )
                submit(commits, batch_samples, batch)
                committing = batch_samples
    skipped = len(mine) - len(pending)
    return CaptureSummary(
        tally.written,
        skipped,
        tally.rejected,
        tally.dropped,
        tally.bytes_written,
        time.perf_counter() - started,
    )


def with_resolved_guidance(config: CaptureConfig) -> CaptureConfig:
    """--guidance as given, else the teacher's recommended scale (teacher_eval.json), else 5.0."""
    if config.guidance is not None:
        return config
    return replace(config, guidance=recommended_guidance(config.teacher) or FALLBACK_GUIDANCE)


def compact_at_end(config: CaptureConfig) -> None:
    """Fold the manifest into one file when it has --compact-after files or more (0: never), so that
    the next open and resume check read one file; safe beside other writers and readers."""
    if not config.compact_after:
        return
    report = compact_store(config.out, min_files=config.compact_after)
    if report.written:
        print(
            f"teacher-cache: folded {report.folded} manifest files into one (--compact-after {config.compact_after})"
        )


def print_summary(config: CaptureConfig, summary: CaptureSummary) -> None:
    """The closing lines: this process's counts, then (main process, after all ranks) the store's totals."""
    state = PartialState()
    rank = f"rank {state.process_index}: " if state.num_processes > 1 else ""
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    print(
        f"teacher-cache: {rank}{summary.written} samples written, {summary.skipped} already in the store, "
        f"{summary.rejected} rejected (NaN/Inf), {summary.dropped} dropped (committed meanwhile by another "
        f"writer); {summary.bytes_written / 1e6:.1f} MB of arrays in "
        f"{summary.seconds:.1f} s ({rate:.2f} samples/s)"
    )
    state.wait_for_everyone()
    if state.is_main_process:
        try:
            compact_at_end(config)
            reader = StoreReader(config.out)
        except DistillCacheError:  # every row was rejected: no store was created
            print(f"teacher-cache: {config.out}: nothing committed")
            return
        print(
            f"teacher-cache: {config.out}: {reader.manifest.num_rows} samples, {reader.nbytes / 1e6:.1f} MB on disk"
        )
