"""Garbage of a store: what killed or racing writers leave behind, that no committed row needs.

    garbage = find_garbage("runs/cache", grace_seconds=24 * 3600)   # lists; removes nothing
    remove_garbage(garbage)                                          # teacher-cache gc STORE --apply

Four kinds, each only when older than the grace period:
- temporary files: `.<name>.<random>.tmp` (our atomic writes) and `<name>.<random>.partial` (Zarr's);
- orphan groups: `groups/<writer>/` folders that no manifest row names (a writer killed before its
  first commit, or whose every batch was rejected);
- uncommitted shards: shard files `groups/<writer>/<field>/c/<i>/...` of a group that has committed
  rows, whose row range [i * shard_rows, (i + 1) * shard_rows) holds no committed row (the batch in
  flight when a writer was killed). Rows a racing writer committed twice count as committed;
- stale claims: `claims/<writer>.json` of a writer killed before it could remove it (advice only).

Why this is safe beside running writers: a writer writes a commit's shards (and a new group's
zarr.json) and only then publishes the manifest file that references them; a file no manifest
references is therefore either garbage or part of a commit in flight. Files younger than the grace
period are never touched, and each file's age is checked again right before it is removed, so gc
removes nothing of a commit in flight as long as no writer takes longer than the grace period
(default 24 h) between writing a file and publishing its manifest. The file listing is taken before
the manifests are read, so a manifest published during gc protects its files. Committed rows are
never touched: their shards, zarr.json files, manifests and store.json are not garbage by
definition. Symlinks are neither followed nor removed (readers refuse them anyway).
"""

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime

from shared.errors import DistillCacheError
from shared.store.arrays import GROUPS
from shared.store.claims import CLAIMS
from shared.store.format import read_metadata
from shared.store.manifest import ManifestFiles
from shared.store.paths import StoreLocation

TEMPORARY = "temporary file"
ORPHAN_GROUP = "orphan group"
UNCOMMITTED_SHARD = "uncommitted shard"
STALE_CLAIM = "stale claim"


@dataclass(frozen=True)
class StoreFile:
    relative: str  # path inside the store
    size: int
    mtime: float  # seconds since the epoch


@dataclass
class Garbage:
    location: StoreLocation
    grace_seconds: float
    files: list[tuple[str, StoreFile]] = field(default_factory=list)  # (kind, file) to remove
    too_recent: list[StoreFile] = field(default_factory=list)  # garbage-shaped, but inside the grace period
    symlinks: list[str] = field(default_factory=list)  # never followed, never removed

    def bytes_by_kind(self) -> dict[str, tuple[int, int]]:
        """{kind: (files, bytes)}."""
        totals: dict[str, tuple[int, int]] = {}
        for kind, item in self.files:
            count, size = totals.get(kind, (0, 0))
            totals[kind] = (count + 1, size + item.size)
        return totals


def find_garbage(url: str | os.PathLike, grace_seconds: float, now: float | None = None) -> Garbage:
    location = StoreLocation.open(url)
    if read_metadata(location) is None:
        raise DistillCacheError(
            f"{location.url} is not a distillcache store (no store.json); nothing to collect"
        )
    now = time.time() if now is None else now
    files, symlinks = list_store_files(location)  # listed before the manifests are read (see docstring)
    manifest = ManifestFiles(location, [], all_columns=False)
    manifest.refresh()
    committed_shards = committed_rows_by_writer(manifest)
    shard_rows = {}
    garbage = Garbage(location, grace_seconds, symlinks=symlinks)
    for item in files:
        kind = classify(location, item.relative, committed_shards, shard_rows)
        if kind is None:
            continue
        if now - item.mtime >= grace_seconds:
            garbage.files.append((kind, item))
        else:
            garbage.too_recent.append(item)
    return garbage


def classify(
    location: StoreLocation, relative: str, committed: dict[str, set[int]], shard_rows: dict
) -> str | None:
    """The kind of garbage `relative` is, or None when it must stay."""
    name = relative.rsplit("/", 1)[-1]
    if (name.startswith(".") and name.endswith(".tmp")) or name.endswith(".partial"):
        return TEMPORARY
    parts = relative.split("/")
    if parts[0] == CLAIMS and len(parts) == 2:  # a writer's claim outlives it only if it was killed
        return STALE_CLAIM
    if parts[0] != GROUPS or len(parts) < 3:
        return None
    writer = parts[1]
    if writer not in committed:
        return ORPHAN_GROUP
    # groups/<writer>/<field>/c/<i>/...: a shard file, committed if any committed row lies in shard i
    if len(parts) < 5 or parts[3] != "c" or not parts[4].isdigit():
        return None
    array = "/".join(parts[:3])
    if array not in shard_rows:
        shard_rows[array] = array_shard_rows(location, array)
    rows_per_shard = shard_rows[array]
    if rows_per_shard is None:  # unreadable metadata: leave the array alone
        return None
    first, stop = int(parts[4]) * rows_per_shard, (int(parts[4]) + 1) * rows_per_shard
    if any(first <= row < stop for row in committed[writer]):
        return None
    return UNCOMMITTED_SHARD


def array_shard_rows(location: StoreLocation, array: str) -> int | None:
    """Rows per shard of an array (its zarr.json), or None when that cannot be read."""
    try:
        metadata = json.loads(location.read_bytes(f"{array}/zarr.json"))
        rows = metadata["chunk_grid"]["configuration"]["chunk_shape"][0]
    except (DistillCacheError, ValueError, KeyError, TypeError, IndexError):
        return None
    return rows if isinstance(rows, int) and rows > 0 else None


def committed_rows_by_writer(manifest: ManifestFiles) -> dict[str, set[int]]:
    """{writer: rows named by any manifest row}, duplicates included (they are committed too)."""
    committed: dict[str, set[int]] = {}
    current = manifest.manifest()
    for table in (current.table, current.duplicates):
        for writer, row in zip(table.column("writer").to_pylist(), table.column("row").to_pylist()):
            committed.setdefault(writer, set()).add(row)
    return committed


def list_store_files(location: StoreLocation) -> tuple[list[StoreFile], list[str]]:
    """Every regular file of the store (relative path, size, mtime) and the symlinks, not followed."""
    files, symlinks = [], []
    if location.is_local:
        for folder, subfolders, names in os.walk(location.root, followlinks=False):
            for name in [*names, *subfolders]:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, location.root).replace(os.sep, "/")
                status = os.lstat(path)
                if os.path.islink(path):
                    symlinks.append(relative)
                elif name in names:
                    files.append(StoreFile(relative, status.st_size, status.st_mtime))
        return files, symlinks
    found = location.call("list the files", location.fs.find, location.root, None, False, True)
    for path, info in found.items():
        if info.get("type") == "directory":
            continue
        relative = path[len(location.root) :].lstrip("/")
        files.append(StoreFile(relative, int(info.get("size") or 0), modified_time(info)))
    return files, symlinks


def modified_time(info: dict) -> float:
    """A file's modification time from an fsspec info dict (local, s3, memory, ...), seconds since the epoch."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return time.time()  # unknown age: treated as new, never removed


def remove_garbage(garbage: Garbage, now: float | None = None) -> list[StoreFile]:
    """Remove the garbage files whose age is still past the grace period (checked again right before
    each removal); then, on a disk, the folders that removal emptied. Returns the files removed."""
    location = garbage.location
    removed = []
    # zarr.json files last: an orphan group that a writer reopens meanwhile keeps its metadata longest
    for _, item in sorted(garbage.files, key=lambda entry: entry[1].relative.endswith("zarr.json")):
        current = current_mtime(location, item.relative)
        if current is None or (time.time() if now is None else now) - current < garbage.grace_seconds:
            continue
        location.check_path(item.relative)
        location.call(f"remove {item.relative}", location.fs.rm_file, location.path(item.relative))
        removed.append(item)
    if location.is_local:
        remove_emptied_folders(location, {item.relative.rsplit("/", 1)[0] for item in removed})
    return removed


def current_mtime(location: StoreLocation, relative: str) -> float | None:
    """The file's modification time now, or None when it is gone or is a symlink."""
    if location.is_local:
        path = location.path(relative)
        if not os.path.exists(path) or os.path.islink(path):
            return None
        return os.lstat(path).st_mtime
    try:
        return modified_time(location.fs.info(location.path(relative)))
    except FileNotFoundError:
        return None


def remove_emptied_folders(location: StoreLocation, folders: set[str]) -> None:
    """Remove each folder (and its parents below groups/) that is empty now."""
    for folder in sorted(folders, key=lambda path: -path.count("/")):
        while folder.startswith(f"{GROUPS}/"):
            path = location.path(folder)
            if os.path.islink(path) or not os.path.isdir(path) or os.listdir(path):
                break
            os.rmdir(path)
            folder = folder.rsplit("/", 1)[0]
