"""StoreWriter: commit batches of rows to a store, atomically, beside any number of other writers.

    writer = StoreWriter("runs/cache", fingerprint=fp, teacher={"source": ..., "revision": None}, settings=settings,
                         fields={"trajectory": FieldSpec("float16", (51, 4, 64, 64)), ...})
    done = writer.committed_ids.contains_many([job.sample_id for job in jobs])    # resume, vectorised
    (or read the manifest first, committed_manifest(url), and pass it: StoreWriter(..., manifest=it))
    todo = [job for job, committed in zip(jobs, done) if not committed]
    writer.commit(rows, {"trajectory": tensor_of_shape_(B, 51, 4, 64, 64), ...})

A commit: (1) validate everything (nothing is written before), (2) create store.json if this is the
store's first commit, (3) write the arrays into this writer's own group on fresh shards,
(4) publish the batch's manifest file. Rows are visible only after (4): a crash before it leaves
unreferenced shards and no half sample. Each writer owns its group and its manifest files, so
writers on one store need no locks. Constructing a writer writes nothing; it refuses a store made
with another teacher fingerprint, other settings or other fields (the `teacher` record, where the
teacher is loaded from, is kept as the first writer wrote it).
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from shared.errors import DistillCacheError, first_line
from shared.store import arrays as zarr_arrays
from shared.store.checksum import row_checksums
from shared.store.committed_ids import CommittedIds
from shared.store.dtypes import to_storage
from shared.store.format import StoreMetadata, read_metadata, refuse_mismatch, write_metadata
from shared.store.manifest import (
    ManifestFiles,
    check_rows,
    commit_table,
    manifest_stem,
    mark_manifest_folder,
    publish,
)
from shared.store.paths import StoreLocation, is_access_error
from shared.store.schema import FieldSpec, check_name

if TYPE_CHECKING:
    import torch

DEFAULT_VAL_FRACTION = 0.1


def new_writer_id() -> str:
    """A group name no other writer will pick: pid for the reader of a listing, random for uniqueness."""
    return f"w{os.getpid()}-{uuid.uuid4().hex[:10]}"


def committed_sample_ids(url: str | os.PathLike) -> CommittedIds:
    """sample_ids already committed to the store at `url` (empty when there is no store yet). A set;
    check many jobs at once with `.contains_many(ids)` (vectorised: shared/store/committed_ids.py).
    A writer about to resume reads `committed_manifest` instead and hands it to its StoreWriter."""
    location = StoreLocation.open(url)
    if read_metadata(location) is None:
        return CommittedIds()
    files = ManifestFiles(location, [], all_columns=False)
    files.refresh()
    return files.sample_ids()


def committed_manifest(url: str | os.PathLike) -> ManifestFiles | None:
    """The manifest of the store at `url` read as a StoreWriter of it reads it (its fields' checksum
    columns, not every column), or None when there is no store yet. `.sample_ids()` is what a resume
    checks its jobs against; `StoreWriter(..., manifest=it)` then continues from it, reading only the
    files published since, so a resume reads the manifest once."""
    location = StoreLocation.open(url)
    metadata = read_metadata(location)
    if metadata is None:
        return None
    files = ManifestFiles(location, list(metadata.fields), all_columns=False)
    files.refresh()
    return files


class StoreWriter:
    def __init__(
        self,
        url: str | os.PathLike,
        *,
        fingerprint: dict,
        teacher: dict,
        settings: dict,
        fields: dict[str, FieldSpec],
        writer_id: str | None = None,
        compressor: str = "zstd",
        clevel: int = 3,
        manifest: ManifestFiles | None = None,
    ):
        """`manifest`: this store's manifest as `committed_manifest(url)` read it (None: read it anew)."""
        self.location = StoreLocation.open(url)
        self.location.check_writable()
        self.metadata = StoreMetadata.create(fingerprint, teacher, settings, fields)
        self.fields = self.metadata.fields
        self.writer_id = check_name(writer_id or new_writer_id(), "writer id")
        self.compression = zarr_arrays.Compression(compressor, clevel)
        self.val_fraction = float(self.metadata.settings.get("val_fraction", DEFAULT_VAL_FRACTION))
        existing = read_metadata(self.location)
        if existing is not None:
            refuse_mismatch(existing, self.metadata, self.location.url)
        self._store_json_written = existing is not None
        self._arrays: dict = {}
        self._next_row = 0
        self._committed_here: set[str] = set()
        self._committed_here_lock = threading.Lock()  # commits may run on another thread than committed_ids
        self._manifest_files = self._continued(manifest) or ManifestFiles(
            self.location, list(self.fields), all_columns=False
        )
        self._array_digests: dict[str, str] = {}

    def _continued(self, manifest: ManifestFiles | None) -> ManifestFiles | None:
        """A manifest read earlier, if it is this store's and read as this writer reads it."""
        if manifest is None:
            return None
        if (
            manifest.location.url != self.location.url
            or set(manifest.fields) != set(self.fields)
            or manifest.all_columns
        ):
            raise ValueError(f"StoreWriter(manifest=...) takes committed_manifest({self.location.url!r})")
        return manifest

    @property
    def committed_ids(self) -> CommittedIds:
        """sample_ids committed by any writer of this store (this one's included as soon as each commit
        is published); each call reads only the manifest files published since the last one, so a
        writer can ask before every batch. The same set object, kept up to date: do not change it."""
        with self._committed_here_lock:
            committed_here, self._committed_here = self._committed_here, set()
        if self._store_json_written or read_metadata(self.location) is not None:
            self._manifest_files.refresh()
        committed = self._manifest_files.sample_ids()
        committed.add(committed_here)
        return committed

    def commit(self, rows: list[dict], arrays: Mapping[str, np.ndarray | torch.Tensor]) -> None:
        """Make `rows` visible together with their arrays, or (on any failure) not at all."""
        check_rows(rows)
        stored = self._stored_arrays(arrays, len(rows))
        self._ensure_arrays(shard_rows_hint=len(rows), create=False)
        first_row, stop = self._next_row, self._next_row + len(rows)
        checksums = {name: row_checksums(values) for name, values in stored.items()}
        table = commit_table(rows, self.writer_id, first_row, checksums, self.val_fraction)
        # inputs are valid: from here on the store is written
        try:
            self._write(rows, stored, table, first_row, stop)
        except Exception as error:
            if isinstance(error, DistillCacheError) or not is_access_error(error):
                raise
            raise DistillCacheError(
                f"cannot write to store {self.location.url} ({first_line(error)}); check that it is reachable "
                "and writable with these credentials (nothing of this batch was committed)"
            ) from None

    def _write(self, rows: list[dict], stored: dict, table, first_row: int, stop: int) -> None:
        """Steps (2)-(4) of a commit: store.json if new, the arrays on fresh shards, then the manifest."""
        self._ensure_store_json()
        self._ensure_arrays(shard_rows_hint=len(rows), create=True)
        assert self._next_row == first_row, "another process is using this writer id"
        handles = [self._arrays[name] for name in self.fields]
        zarr_arrays.gather([handle.resize((stop, *handle.shape[1:])) for handle in handles])
        # the next commit starts on a fresh shard even if this one fails from here on
        shard_rows = zarr_arrays.shard_rows_of(handles[0])
        self._next_row = math.ceil(stop / shard_rows) * shard_rows
        zarr_arrays.gather(
            [self._arrays[name].setitem(slice(first_row, stop), stored[name]) for name in self.fields]
        )
        if len(self._array_digests) != len(self.fields):  # what readers check each array against
            self._array_digests = {
                name: zarr_arrays.read_metadata_digest(self.location, self.writer_id, name)
                for name in self.fields
            }
        self._publish_manifest(table, manifest_stem(self.writer_id, first_row))
        with self._committed_here_lock:
            self._committed_here.update(row["sample_id"] for row in rows)

    def _publish_manifest(self, table, stem: str) -> None:
        """The commit point (a method of its own so that crash tests can stop a writer right before it)."""
        publish(self.location, table, stem, self._array_digests)

    def _stored_arrays(self, arrays: Mapping, num_rows: int) -> dict[str, np.ndarray]:
        missing, extra = sorted(set(self.fields) - set(arrays)), sorted(set(arrays) - set(self.fields))
        if missing or extra:
            raise DistillCacheError(
                f"commit arrays must match the store's fields: missing {missing}, unknown {extra}"
            )
        stored = {}
        for name, spec in self.fields.items():
            shape = tuple(arrays[name].shape)
            if shape != (num_rows, *spec.shape):
                raise DistillCacheError(
                    f"field {name}: array of shape {shape}, expected {(num_rows, *spec.shape)} (rows, *field shape)"
                )
            stored[name] = to_storage(arrays[name], spec.dtype)
        return stored

    def _ensure_store_json(self) -> None:
        """First commit to a new store: publish store.json, then re-read it (another writer may have won)."""
        if self._store_json_written:
            return
        if read_metadata(self.location) is None:
            mark_manifest_folder(self.location)  # first: a store.json without it means a lost manifest/
            write_metadata(self.location, self.metadata)
        refuse_mismatch(read_metadata(self.location), self.metadata, self.location.url)
        self._store_json_written = True

    def _ensure_arrays(self, shard_rows_hint: int, create: bool) -> None:
        """Open this writer's arrays (creating the missing ones if `create`); set the first free row.

        The next commit starts after every shard already in the group, so shards left by a killed
        commit of this writer id are never written again.
        """
        if len(self._arrays) == len(self.fields) or (self._arrays and not create):
            return
        store = self.location.zarr_store(read_only=False)
        if not self._arrays and self.location.exists("store.json"):
            for name, spec in self.fields.items():
                handle = zarr_arrays.open_array(self.location, store, self.writer_id, name, spec)
                if handle is not None:
                    self._arrays[name] = handle
        shard_rows = (
            zarr_arrays.shard_rows_of(next(iter(self._arrays.values()))) if self._arrays else shard_rows_hint
        )
        if create:
            for name, spec in self.fields.items():
                if name not in self._arrays:
                    self._arrays[name] = zarr_arrays.create_array(
                        store, self.writer_id, name, spec, max(1, shard_rows), self.compression
                    )
        if self._arrays:
            used_rows = max(handle.shape[0] for handle in self._arrays.values())
            self._next_row = math.ceil(used_rows / shard_rows) * shard_rows
