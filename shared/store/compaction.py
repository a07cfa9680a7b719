"""Compaction: fold a store's many manifest files into one, safely beside readers and writers.

    report = compact_store("runs/cache", grace_seconds=15 * 60)   # teacher-cache compact STORE
    report.folded, report.rows, report.written, report.removed

Every commit publishes one manifest file and every open reads them all, so opening a store costs
time in proportion to its history. Compaction writes one file holding every committed row and names
the files it replaces; readers then read that one file and skip the files it replaces.

The protocol (docs/store.md, "Compaction", says why each step keeps every row visible exactly once):
1. Read the manifest as a reader does (ManifestFiles: commit files listed, then compacted files;
   files a compacted file replaces are skipped; a row listed twice is kept once).
2. Remove the files that an earlier compaction replaced, once that compaction's file is older than
   the grace period: a reader that listed them before it existed has finished reading by then (and a
   reader that finds a listed file gone lists again, and finds its replacement).
3. If more than one file is live, publish one compacted file (written whole, named by its CRC-32C,
   like every manifest file) with every live row, sorted by (sample_id, writer, row), and the names
   of every listed file whose rows it holds. Nothing is removed in the run that publishes it.
Rows, arrays and shards are never touched, so gc (shared/store/gc.py), which reads the same manifest,
sees the same committed rows before and after. Two compactions at once are safe: each replaces what
it read; a reader keeps a row that both hold once.
"""

import os
import time
from dataclasses import dataclass, field

from shared.errors import DistillCacheError
from shared.store.format import read_metadata
from shared.store.gc import current_mtime
from shared.store.manifest import MANIFEST, ManifestFiles, publish_compacted
from shared.store.paths import StoreLocation

DEFAULT_GRACE_SECONDS = 15 * 60


@dataclass
class CompactionReport:
    folded: int = 0  # live manifest files folded into the new compacted file
    rows: int = 0  # rows it holds
    written: str | None = None  # its path in the store; None when there was nothing to fold
    removed: list[str] = field(default_factory=list)  # replaced files removed (older replacements)
    waiting: int = 0  # replaced files kept until their replacement is older than the grace period


def live_commit_files(files: ManifestFiles) -> int:
    """Commit files whose rows no compacted file holds yet (what auto-compaction counts)."""
    return sum(not name.startswith("compacted/") for name in files.live_names())


def compact_store(
    url: str | os.PathLike,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    min_files: int = 2,
    files: ManifestFiles | None = None,
) -> CompactionReport:
    """Fold the store's live manifest files into one when there are at least `min_files`; first remove
    files replaced by a compaction older than `grace_seconds`. `files`: a ManifestFiles of this store
    to reuse (a writer's), refreshed here."""
    location = files.location if files is not None else StoreLocation.open(url)
    metadata = read_metadata(location)
    if metadata is None:
        raise DistillCacheError(
            f"{location.url} is not a distillcache store (no store.json); nothing to compact"
        )
    files = files or ManifestFiles(location, list(metadata.fields))
    files.refresh()
    report = CompactionReport()
    report.removed, report.waiting = remove_replaced(location, files, grace_seconds)
    live = files.live_names()
    if len(live) < max(2, min_files):
        return report
    table = files.all_rows()
    writers = set(table.column("writer").unique().to_pylist())
    digests = {writer: fields for writer, fields in files.writer_digests().items() if writer in writers}
    replaces = sorted({*live, *files.replaced_names()} - set(report.removed))
    report.written = publish_compacted(location, table, digests, replaces)
    report.folded, report.rows = len(live), table.num_rows
    return report


def remove_replaced(
    location: StoreLocation, files: ManifestFiles, grace_seconds: float
) -> tuple[list[str], int]:
    """Remove each listed file that a compacted file replaces, once that compacted file is older than
    the grace period; returns (the files removed, how many wait for their replacement to age)."""
    removed, waiting = [], 0
    ages: dict[str, float | None] = {}
    now = time.time()
    for name, replacement in sorted(files.replaced_names().items()):
        if replacement not in ages:
            published = current_mtime(location, f"{MANIFEST}/{replacement}")
            ages[replacement] = None if published is None else now - published
        age = ages[replacement]
        if age is None or age < grace_seconds:
            waiting += 1
            continue
        location.remove(f"{MANIFEST}/{name}")
        removed.append(name)
    return removed, waiting
