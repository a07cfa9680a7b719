"""Scale benchmark: open time and resume-check time against rows, before and after compaction, on
local disk and on moto's S3 server (bench/moto_s3.py).

    .venv/bin/python -m bench scale                       # make bench BENCH=scale
    BENCH_SCALE_ROWS=10000,100000 .venv/bin/python -m bench scale
    BENCH_SCALE_ROWS=1000000 BENCH_SCALE_AFTER_ONLY=1 .venv/bin/python -m bench scale   # compacted only

Each store holds ROWS rows of two small fields, and its manifest is one file per COMMIT_ROWS-row commit
(as `teacher-cache run --batch-size 64` leaves it). To build 10^6 rows in a minute, the arrays are
written by one StoreWriter in large commits, and the manifest is then published again as the 64-row
files that 64-row commits would have left (same rows, same names, same checks); what is timed reads
only manifests, which are then exactly those of a store written 64 rows at a time. The S3 store is an
upload of the disk store, before compaction.

On S3, stores above BENCH_SCALE_S3_BEFORE_MAX_ROWS (10^5) are measured after compaction only (uploaded
compacted): before it, an open reads every manifest file one GET after another, minutes at 10^6 rows.

Timed, each the median of up to REPEATS runs in this process (one run once a run takes > 5 s):
- open: `StoreReader(url)` (store.json, the manifest read and checked, each sample once);
- resume check: what `teacher-cache run` does before its first batch: `committed_sample_ids(url)` (the
  manifest's ids as sorted 128-bit numbers, shared/store/committed_ids.py), then `contains_many` over a
  job list of every committed id plus NEW_JOBS new ones (the pending jobs must be exactly those);
- resume check with a Python set (disk, after compaction): the same check made as before CommittedIds
  (the manifest's ids as a Python set, each job looked up in it), for a side-by-side figure;
- compaction: `compact_store(url)` once, then again with no grace period to remove the files it replaced
  (a store's steady state: the measurements "after" read one manifest file).
Wall seconds, and this process's CPU seconds (the moto server's own work is in another process).
"""

import os
import shutil
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from bench.bench_store import bench_writer
from shared.store import FieldSpec, StoreReader
from shared.store.compaction import compact_store
from shared.store.manifest import COMPACTED, MANIFEST, ManifestFiles, manifest_stem, publish
from shared.store.paths import StoreLocation
from shared.store.writer import committed_sample_ids

ROWS = tuple(int(rows) for rows in os.environ.get("BENCH_SCALE_ROWS", "10000,100000,1000000").split(","))
COMMIT_ROWS = 64
WRITE_ROWS = 50_000  # rows per StoreWriter commit while building
REPEATS = int(os.environ.get("BENCH_SCALE_REPEATS", "5"))
NEW_JOBS = 1000  # jobs of the resume check that the store does not hold
# Before compaction, an S3 open reads every file one GET after another (tens of ms each from moto on
# this machine): above this many rows only the compacted store is measured on S3, uploaded compacted.
S3_BEFORE_MAX_ROWS = int(os.environ.get("BENCH_SCALE_S3_BEFORE_MAX_ROWS", "100000"))
# BENCH_SCALE_AFTER_ONLY=1: measure compacted stores only (built and compacted at once: minutes less)
AFTER_ONLY = os.environ.get("BENCH_SCALE_AFTER_ONLY", "") == "1"
FIELDS = {"latents": FieldSpec("float16", (4,)), "label": FieldSpec("int32", ())}
FOLDER = Path("runs/bench/scale")


def build(url: str, rows: int, commit_files: bool = True) -> list[str]:
    """A store of `rows` rows whose manifest is one file per COMMIT_ROWS rows (else compacted into
    one); returns its sample ids."""
    writer = bench_writer(url, FIELDS, val_fraction=0.05)
    rng = np.random.default_rng(0)
    sample_ids = []
    for start in range(0, rows, WRITE_ROWS):
        count = min(WRITE_ROWS, rows - start)
        batch = [
            {"sample_id": uuid.UUID(int=int(rng.integers(2**63)) << 64 | index).hex, "prompt": f"prompt {index % 5000}",
             "negative_prompt": "", "seed": index, "guidance_scale": 7.5, "num_inference_steps": 50}
            for index in range(start, start + count)
        ]  # fmt: skip
        arrays = {
            "latents": rng.standard_normal((count, 4)).astype(np.float16),
            "label": np.arange(start, start + count, dtype=np.int32),
        }
        writer.commit(batch, arrays)
        sample_ids += [row["sample_id"] for row in batch]
    if commit_files:
        split_into_commit_files(StoreLocation.open(url), writer.writer_id)
    else:
        compact_store(url)
        compact_store(url, grace_seconds=0)
    return sample_ids


def job_list(sample_ids: list[str]) -> list[str]:
    """A resumed run's jobs: every committed id (random hex, in the order made, as `teacher-cache run`
    makes its job list) and NEW_JOBS ids not in the store, spread among them."""
    jobs = list(sample_ids)
    for index in range(NEW_JOBS):
        jobs.insert(index * len(jobs) // NEW_JOBS, uuid.UUID(int=index).hex)
    return jobs


def split_into_commit_files(location: StoreLocation, writer_id: str) -> None:
    """Publish the manifest again as one file per COMMIT_ROWS rows, then remove the large files."""
    files = ManifestFiles(location, list(FIELDS))
    files.refresh()
    large = files.live_names()
    table = files.all_rows()
    table = table.take(pc.sort_indices(table, [("row", "ascending")]))
    digests = files.array_digests(writer_id)
    for start in range(0, table.num_rows, COMMIT_ROWS):
        part = table.slice(start, COMMIT_ROWS)
        publish(location, part, manifest_stem(writer_id, part.column("row")[0].as_py()), digests)
    for name in large:
        location.remove(f"{MANIFEST}/{name}")


def timed(call, cpu: bool = False) -> dict:
    """Median wall (and CPU) seconds of up to REPEATS calls; one call when it takes > 5 s."""
    walls, cpus = [], []
    for _ in range(REPEATS):
        started, cpu_started = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu_started)
        if walls[-1] > 5:
            break
    figures = {"seconds": statistics.median(walls), "runs": len(walls)}
    if cpu:
        figures["cpu_seconds"] = statistics.median(cpus)
    return figures


def measure(
    url: str, rows: int, jobs: list[str], before: bool = True, after_python_set: bool = False
) -> dict:
    """Open and resume-check times before compaction (if `before`), the compaction, and after it (and
    the resume check made with a Python set of the ids, as before CommittedIds, if `after_python_set`);
    a store measured with before=False must be compacted already."""

    def open_store():
        assert len(StoreReader(url)) == rows

    def resume_check():
        done = committed_sample_ids(url).contains_many(jobs)
        assert len(done) - int(done.sum()) == NEW_JOBS

    figures = {"manifest_files": count_manifest_files(url)}
    if before:
        figures["before"] = {
            "open": timed(open_store, cpu=True),
            "resume_check": timed(resume_check, cpu=True),
        }
        started = time.perf_counter()
        report = compact_store(url)
        figures["compact_seconds"] = time.perf_counter() - started
        assert report.folded == figures["manifest_files"] and report.rows == rows
        started = time.perf_counter()
        removed = compact_store(url, grace_seconds=0).removed
        figures["remove_replaced_seconds"] = time.perf_counter() - started
        assert len(removed) == figures["manifest_files"]

    def resume_check_python_set():  # the same check as made before CommittedIds, for comparison
        files = ManifestFiles(StoreLocation.open(url), [], all_columns=False)
        files.refresh()
        committed = set(files.all_rows().column("sample_id").to_pylist())
        assert sum(job not in committed for job in jobs) == NEW_JOBS

    figures["after"] = {"open": timed(open_store, cpu=True), "resume_check": timed(resume_check, cpu=True)}
    if after_python_set:
        figures["after"]["resume_check_python_set"] = timed(resume_check_python_set, cpu=True)
    return figures


def count_manifest_files(url: str) -> int:
    location = StoreLocation.open(url)
    return sum(len(location.list_names(folder, ".parquet", fresh=True)) for folder in (MANIFEST, COMPACTED))


def upload(folder: Path, url: str) -> None:
    location = StoreLocation.open(url)
    location.fs.put(str(folder), location.root, recursive=True)


def print_table(results: dict) -> None:
    print("wall seconds (this process's CPU seconds)")
    print(
        "| where | rows | manifest files | open before | open after | resume check before | resume check after "
        "| resume check after, Python set | compact |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, run in results.items():
        where, rows = key.split(":")
        before, after = run.get("before"), run["after"]

        def seconds(state, what):  # wall (CPU) seconds
            return (
                f"{state[what]['seconds']:.2f} s ({state[what]['cpu_seconds']:.2f})"
                if state and what in state
                else "not run"
            )

        compact = f"{run['compact_seconds']:.1f} s" if "compact_seconds" in run else "not run"
        print(
            f"| {where} | {int(rows):,} | {run['manifest_files']:,} | {seconds(before, 'open')} "
            f"| {seconds(after, 'open')} | {seconds(before, 'resume_check')} "
            f"| {seconds(after, 'resume_check')} | {seconds(after, 'resume_check_python_set')} | {compact} |"
        )


def main() -> dict:
    from bench.moto_s3 import moto_s3

    results = {}
    FOLDER.mkdir(parents=True, exist_ok=True)
    with moto_s3() as new_bucket:
        for rows in ROWS:
            folder = FOLDER / f"rows-{rows}"
            shutil.rmtree(folder, ignore_errors=True)
            started = time.perf_counter()
            jobs = job_list(build(str(folder), rows, commit_files=not AFTER_ONLY))
            print(f"built {rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
            s3_before = rows <= S3_BEFORE_MAX_ROWS and not AFTER_ONLY
            if s3_before:  # the store as written, 64 rows a file
                url = new_bucket() + "/store"
                upload(folder, url)
            results[f"disk:{rows}"] = measure(str(folder), rows, jobs, not AFTER_ONLY, after_python_set=True)
            print(f"disk {rows:,}: {results[f'disk:{rows}']}", flush=True)
            if not s3_before:  # the compacted store
                url = new_bucket() + "/store"
                upload(folder, url)
            results[f"s3:{rows}"] = measure(url, rows, jobs, before=s3_before)
            print(f"s3 {rows:,}: {results[f's3:{rows}']}", flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    print_table(results)
    return {"commit_rows": COMMIT_ROWS, "fields": {k: str(v) for k, v in FIELDS.items()}, "runs": results}


if __name__ == "__main__":
    main()
