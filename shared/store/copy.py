"""Copy and merge: the committed rows of one or more stores into another, checked as they are read.

    report = copy_stores(["runs/cache"], "s3://bucket/cache")        # teacher-cache copy SRC DST
    report = copy_stores(["alice/cache", "bob/cache"], "team/cache")  # teacher-cache merge A B --out C

Rows, not files, are copied: each committed row is read from its source with its CRC-32C checked
(StoreReader's verified read), and committed to the destination by an ordinary StoreWriter, a batch
of about `batch_bytes` per commit (one shard per field). So only committed rows travel (no
uncommitted shard, no duplicate of racing writers, no replaced manifest), the destination gets few
large shards whatever the sources' history, and any fsspec location can be either end.

- **Combining.** Every source must have the teacher fingerprint, capture settings and fields of the
  first (the teacher record, where the teacher is loaded from, is taken from the first). A sample in
  several sources is copied once, from the first that has it; the report counts such samples, and
  how many of them hold other values (same sample id, different checksums: a capture that is not
  bit-reproducible across machines).
- **Never over another store.** The destination is new (no file there), or a store with the same
  fingerprint, settings and fields whose every sample is in the sources: an earlier copy or merge of
  these sources, killed or complete. Anything else is refused before anything is written.
- **Resumable.** A copy killed at any point is resumed by running it again: rows already committed
  to the destination are skipped (a killed batch leaves only unreferenced shards, for gc).
- **Readers of the destination** see its rows grow commit by commit, each row once (it is written
  like any store); the copy ends with a compaction of its manifest.
"""

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from shared.errors import DistillCacheError
from shared.store.checksum import checksum_column
from shared.store.compaction import compact_store
from shared.store.format import StoreMetadata, differences, read_metadata, refuse_mismatch
from shared.store.manifest import ADDED_COLUMNS
from shared.store.paths import StoreLocation
from shared.store.reader import StoreReader
from shared.store.writer import StoreWriter, committed_sample_ids

BATCH_BYTES = 64 * 2**20
MAX_BATCH_ROWS = 16384


@dataclass
class CopyPlan:
    readers: list[StoreReader]
    metadata: StoreMetadata  # what the destination's store.json holds
    todo: list[tuple[int, np.ndarray]]  # (source index, its manifest rows to copy, in storage order)
    already: int  # samples the destination holds already
    repeated: int  # samples found in more than one source (copied once)
    differing: int  # of those, how many have other checksums in a later source

    @property
    def rows(self) -> int:
        return sum(len(rows) for _, rows in self.todo)

    @property
    def row_bytes(self) -> int:
        """Uncompressed bytes of one row (every field)."""
        return sum(spec.sample_nbytes for spec in self.metadata.fields.values())


@dataclass(frozen=True)
class CopyReport:
    copied: int  # rows committed to the destination now
    bytes: int  # their uncompressed bytes
    already: int
    repeated: int
    differing: int
    seconds: float


def same_place(a: StoreLocation, b: StoreLocation) -> bool:
    if a.is_local and b.is_local:
        return os.path.realpath(a.root) == os.path.realpath(b.root)
    return type(a.fs) is type(b.fs) and a.root.rstrip("/") == b.root.rstrip("/")


def plan_copy(sources: list[str], destination: str) -> CopyPlan:
    """Open and check every source and the destination; the rows to copy. Writes nothing."""
    if not sources:
        raise DistillCacheError("give at least one store to copy from")
    readers = [StoreReader(url) for url in sources]
    target = StoreLocation.open(destination)
    for index, reader in enumerate(readers):
        if same_place(reader.location, target):
            raise DistillCacheError(
                f"{reader.location.url} is the destination itself; choose another destination"
            )
        for earlier in readers[:index]:
            if same_place(reader.location, earlier.location):
                raise DistillCacheError(f"{reader.location.url} is given twice; give each store once")
    metadata = StoreMetadata(
        readers[0].fingerprint, readers[0].teacher, readers[0].settings, readers[0].fields
    )
    for reader in readers[1:]:
        other = StoreMetadata(reader.fingerprint, reader.teacher, reader.settings, reader.fields)
        found = differences(metadata, other)
        if found:
            raise DistillCacheError(
                f"{reader.location.url} cannot be combined with {readers[0].location.url}: "
                f"{'; '.join(found[:3])}{' ...' if len(found) > 3 else ''}; only stores of one teacher (same "
                "weights digest) and the same capture settings and fields combine"
            )
    existing = check_destination(target, metadata)
    todo, seen = [], {}  # seen: sample_id -> (source index, manifest row)
    repeated = differing = 0
    for index, reader in enumerate(readers):
        ids = reader.manifest.column("sample_id").to_pylist()
        wanted = []
        for row, sample_id in enumerate(ids):
            if sample_id in seen:
                repeated += 1
                differing += not same_checksums(readers, seen[sample_id], (index, row))
                continue
            seen[sample_id] = (index, row)
            if sample_id not in existing:
                wanted.append(row)
        if wanted:
            todo.append((index, reader.in_storage_order(np.asarray(wanted, dtype=np.int64))))
    foreign = existing - set(seen)
    if foreign:
        raise DistillCacheError(
            f"{target.url} is another store: it holds {len(foreign)} samples that none of the sources has; "
            "copy into a new place, or combine all of them: teacher-cache merge DST SRC ... --out NEW"
        )
    return CopyPlan(readers, metadata, todo, len(existing), repeated, differing)


def check_destination(target: StoreLocation, metadata: StoreMetadata) -> set[str]:
    """The sample ids the destination holds (empty for a new one); refuses one that is not a store of
    this teacher, settings and fields, or a folder that holds other files."""
    target.check_writable()
    existing = read_metadata(target)
    if existing is None:
        if target.exists() and target.total_bytes() > 0:
            raise DistillCacheError(f"{target.url} holds files but no store; copy into a new or empty place")
        return set()
    refuse_mismatch(existing, metadata, target.url)
    return committed_sample_ids(target.url)


def same_checksums(readers: list[StoreReader], first: tuple[int, int], other: tuple[int, int]) -> bool:
    fields = readers[first[0]].fields
    return all(
        readers[first[0]].manifest.column(checksum_column(field))[first[1]]
        == readers[other[0]].manifest.column(checksum_column(field))[other[1]]
        for field in fields
    )


def batches(plan: CopyPlan, batch_bytes: int) -> Iterator[tuple[StoreReader, np.ndarray]]:
    """(source, its manifest rows) per commit: about batch_bytes each, never two sources in one."""
    per_batch = int(min(MAX_BATCH_ROWS, max(1, batch_bytes // max(1, plan.row_bytes))))
    for index, rows in plan.todo:
        for start in range(0, len(rows), per_batch):
            yield plan.readers[index], rows[start : start + per_batch]


def read_batch(reader: StoreReader, rows: np.ndarray) -> tuple[list[dict], dict]:
    """The rows' manifest metadata (what a commit takes) and every field, each row checked."""
    columns = [
        name
        for name in reader.manifest.column_names
        if name not in ADDED_COLUMNS and not name.startswith("checksum_")
    ]
    metadata = reader.manifest.select(columns).take(rows).to_pylist()
    arrays = {  # stored values as they are; bfloat16 as a tensor (its bits are not a numpy dtype)
        field: reader.read(field, rows) if spec.dtype == "bfloat16" else reader.read_stored(field, rows)
        for field, spec in reader.fields.items()
    }
    return metadata, arrays


def copy_stores(
    sources: list[str], destination: str, batch_bytes: int = BATCH_BYTES, progress: bool = True
) -> CopyReport:
    """Copy the committed rows of `sources` (the first copy of each sample) into `destination`."""
    started = time.perf_counter()
    plan = plan_copy(sources, destination)
    total = plan.rows * plan.row_bytes
    if plan.rows:
        writer = StoreWriter(
            destination,
            fingerprint=plan.metadata.fingerprint,
            teacher=plan.metadata.teacher,
            settings=plan.metadata.settings,
            fields=plan.metadata.fields,
        )
        bar = tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1000, desc="copy", disable=not progress
        )
        with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-reader") as pool:
            pending = None  # the next batch is read while this one is written
            for reader, rows in batches(plan, batch_bytes):
                upcoming = pool.submit(read_batch, reader, rows)
                if pending is not None:
                    commit_batch(writer, pending.result(), bar, plan.row_bytes)
                pending = upcoming
            commit_batch(writer, pending.result(), bar, plan.row_bytes)
    if plan.rows or plan.already:
        compact_store(destination)  # the files of this copy (and of any earlier, killed one) in one
    return CopyReport(
        plan.rows, total, plan.already, plan.repeated, plan.differing, time.perf_counter() - started
    )


def commit_batch(writer: StoreWriter, batch: tuple[list[dict], dict], bar, row_bytes: int) -> None:
    rows, arrays = batch
    writer.commit(rows, arrays)
    bar.update(len(rows) * row_bytes)
