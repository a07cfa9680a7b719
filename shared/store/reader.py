"""StoreReader: the committed rows of a store, from a local folder or any fsspec URL.

    reader = StoreReader("runs/cache")                      # or "s3://bucket/cache", "memory://cache"
    reader.fields["trajectory"]                             # FieldSpec("float16", (51, 4, 64, 64))
    rows = reader.indices("train")                          # row indices into reader.manifest
    x = reader.read("trajectory", rows[:64], steps=[10])    # (64, 1, 4, 64, 64) float16
    e = reader.read("cond.encoder_hidden_states", rows[:64])  # (64, 77, 768)

`manifest` holds committed rows only, sorted by sample_id (`duplicates`: rows of samples that racing
writers committed twice, skipped). A read is batched: the rows are grouped by writer group into
contiguous runs, and every run of every group is fetched in one round trip to Zarr (whole chunks;
see shared.store.arrays), so the cost does not grow with one call per sample.

Every read is verified (`verify=True`, the default): each row read is checked against the CRC-32C
its manifest row holds before any of it is returned, on every path (`read`, `read_stored`, and so
`example_batches`, the training loaders and eval). A read of some steps reads the whole rows, checks
them, then slices (a chunk holds a whole row up to 4 MiB, so this decodes nothing more). A chunk that
is missing reads as the fill value, which the checksum catches; one that cannot be decoded is the
same one-line error. `verify=False` skips the check, for a store verified already.

`cache_dir` (a remote store only): shards are copied to a local folder on first read and read from
there afterwards (shared/store/read_cache.py), so a second epoch runs at local-disk speed; "auto": a
per-user folder when the store fits (`reader.cache_note` says what was chosen).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.errors import DistillCacheError, first_line
from shared.store import arrays as zarr_arrays
from shared.store.checksum import checksum_column, row_checksums
from shared.store.dtypes import from_storage, storage_dtype
from shared.store.format import read_metadata
from shared.store.manifest import read_manifest
from shared.store.paths import StoreLocation, is_access_error
from shared.store.read_cache import ShardCache, choose_cache_dir
from shared.store.schema import FieldSpec


class DamagedRowsError(DistillCacheError):
    """Rows whose bytes are wrong (checksum mismatch, undecodable or missing data): the store is damaged
    there, as opposed to a store refused as a whole (unsafe metadata, a symlink, an unreachable store).
    `reason` says what is wrong with them in a few words."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


DAMAGED_ROWS_HINT = (
    "the store is damaged: `teacher-cache verify STORE` lists every damaged row; recapture them into a "
    "fresh store or restore the store from a good copy"
)

if TYPE_CHECKING:
    import torch


class StoreReader:
    def __init__(
        self, url: str | os.PathLike, verify: bool = True, cache_dir: str | os.PathLike | None = None
    ):
        self.location = StoreLocation.open(url)
        self.verify = verify
        metadata = read_metadata(self.location)
        if metadata is None:
            raise DistillCacheError(
                f"{self.location.url} is not a distillcache store (no store.json); "
                "make one with `teacher-cache run --out STORE`"
            )
        self.format_version: int = metadata.format_version
        self.fingerprint: dict = metadata.fingerprint  # the teacher's identity
        self.teacher: dict = metadata.teacher  # where to load it: {"source", "revision"}
        self.settings: dict = metadata.settings
        self.fields: dict[str, FieldSpec] = metadata.fields
        manifest = read_manifest(self.location, list(self.fields))
        self.manifest: pa.Table = manifest.table
        self.duplicates: pa.Table = manifest.duplicates
        self._array_digests = manifest.array_digests
        writers = pc.unique(self.manifest.column("writer"))
        self._writers: list[str] = writers.to_pylist()
        self._writer_codes = pc.index_in(self.manifest.column("writer"), value_set=writers).to_numpy()
        self._rows = self.manifest.column("row").to_numpy().astype(np.int64)
        self._zarr_store = self.location.zarr_store(read_only=True)
        self.cache = None  # the local copies of a remote store's shards (cache_dir)
        uncompressed = len(self.manifest) * sum(spec.sample_nbytes for spec in self.fields.values())
        cache_dir, self.cache_note = choose_cache_dir(self.location, cache_dir, uncompressed)
        if cache_dir:
            self.cache = ShardCache(self.location, cache_dir)
            self._zarr_store = self.cache.zarr_store(self._zarr_store)
        self._arrays: dict[tuple[str, str], object] = {}
        self._checksum_columns: dict[str, np.ndarray] = {}
        self._cache_cleared = False

    def __len__(self) -> int:
        return self.manifest.num_rows

    @property
    def writers(self) -> list[str]:
        return list(self._writers)

    @property
    def nbytes(self) -> int:
        """Bytes the store takes (store.json, manifest, arrays)."""
        return self.location.total_bytes()

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices into `manifest`, all of them or those of one split ("train" / "val")."""
        if split is None:
            return np.arange(self.manifest.num_rows)
        if split not in ("train", "val"):
            raise DistillCacheError(f"split {split!r} is unknown; use 'train' or 'val'")
        return np.flatnonzero(pc.equal(self.manifest.column("split"), split).to_numpy(zero_copy_only=False))

    def in_storage_order(self, rows: Sequence[int]) -> np.ndarray:
        """`rows` (indices into `manifest`) sorted by where they are stored (writer group, then row): the
        order in which reading them touches each shard once, in runs."""
        rows = self._check_rows(rows)
        return rows[np.lexsort((self._rows[rows], self._writer_codes[rows]))]

    def distinct_rows(self, field: str, rows: Sequence[int]) -> int:
        """How many distinct values `field` takes over `rows`, counted by the manifest's checksums (rows
        with equal bytes have equal checksums), without reading the arrays."""
        return len(np.unique(self._checksums(field)[self._check_rows(rows)]))

    def read(self, field: str, rows: Sequence[int], steps: Sequence[int] | None = None) -> torch.Tensor:
        """(len(rows), *shape), or with `steps` (len(rows), len(steps), *shape[1:]); the field's real dtype."""
        return from_storage(self.read_stored(field, rows, steps), self.fields[field].dtype)

    def read_stored(self, field: str, rows: Sequence[int], steps: Sequence[int] | None = None) -> np.ndarray:
        """As `read`, but the stored numpy values (bfloat16 as its uint16 bits)."""
        try:
            return self._read_stored(field, rows, steps)
        except DamagedRowsError:
            if self.cache is None or self._cache_cleared:
                raise
            self._cache_cleared = True  # a stale or damaged local copy: read again from the store, once
            self.cache.clear()
            return self._read_stored(field, rows, steps)

    def _read_stored(self, field: str, rows: Sequence[int], steps: Sequence[int] | None = None) -> np.ndarray:
        spec = self._spec(field)
        rows = self._check_rows(rows)
        step_index, step_slice = self._check_steps(spec, steps)
        if self.verify:  # whole rows, so that each can be checked against its checksum
            step_slice = ()
            step_index = None if steps is None else np.asarray(steps, dtype=np.int64).reshape(-1)
        out_shape = spec.shape if step_index is None else (len(step_index), *spec.shape[1:])
        out = np.empty((len(rows), *out_shape), dtype=storage_dtype(spec.dtype))
        placements, requests = [], []
        for code in np.unique(self._writer_codes[rows]):
            positions = np.flatnonzero(self._writer_codes[rows] == code)
            physical = self._rows[rows[positions]]
            order = np.argsort(physical, kind="stable")
            array = self._array(self._writers[code], field)
            for start, stop in zarr_arrays.chunk_runs(np.unique(physical), array.chunks[0]):
                requests.append(array.getitem((slice(start, stop), *step_slice)))
                taken = order[
                    np.searchsorted(physical[order], start) : np.searchsorted(physical[order], stop)
                ]
                placements.append((positions[taken], physical[taken] - start))
        for (destination, offsets), values in zip(placements, self._gather(field, rows, requests)):
            if self.verify:
                self._check_checksums(field, rows[destination], values, offsets)
            if step_index is not None:
                out[destination] = values[offsets[:, None], step_index]
            elif len(offsets) == len(values) and np.array_equal(offsets, np.arange(len(values))):
                out[destination] = values  # the run read is exactly the rows wanted: no extra copy
            else:
                out[destination] = values[offsets]
        return out

    def _gather(self, field: str, rows: np.ndarray, requests: list) -> list[np.ndarray]:
        """The Zarr reads, with any failure (a chunk that cannot be decoded, an unreachable store) one line."""
        try:
            return zarr_arrays.gather(requests)
        except DistillCacheError:
            raise
        except Exception as error:
            if not is_access_error(error):  # a damaged chunk can fail inside any codec, with any error type
                raise DamagedRowsError(
                    f"{self.location.url}: field {field!r} of {self._rows_named(rows)} cannot be decoded "
                    f"({type(error).__name__}: {first_line(error)}); {DAMAGED_ROWS_HINT}",
                    f"cannot be decoded ({type(error).__name__}: {first_line(error)})",
                ) from None
            raise DistillCacheError(
                f"cannot read field {field!r} of {self.location.url} ({first_line(error)}); check that the store "
                "is reachable"
            ) from None

    def _check_checksums(
        self, field: str, manifest_rows: np.ndarray, values: np.ndarray, offsets: np.ndarray
    ):
        """Refuse a run of rows read whose CRC-32C differs from its manifest row's."""
        unique_offsets, first = np.unique(offsets, return_index=True)
        whole_run = len(unique_offsets) == len(values)  # else the run holds rows between those asked for
        actual = np.asarray(row_checksums(values if whole_run else values[unique_offsets]), dtype=np.int64)
        expected = self._checksums(field)[manifest_rows[first]]
        bad = manifest_rows[first][actual != expected]
        if len(bad):
            raise DamagedRowsError(
                f"{self.location.url}: field {field!r} of {self._rows_named(bad)} does not match its checksum "
                f"(damaged or missing chunk); {DAMAGED_ROWS_HINT}",
                "checksum mismatch",
            )

    def _checksums(self, field: str) -> np.ndarray:
        if field not in self._checksum_columns:
            column = self.manifest.column(checksum_column(field)).to_numpy(zero_copy_only=False)
            self._checksum_columns[field] = np.asarray(column, dtype=np.int64)
        return self._checksum_columns[field]

    def _rows_named(self, manifest_rows: np.ndarray, shown: int = 3) -> str:
        """'rows <sample_id> (writer w row r), ... and N more' for an error line."""
        manifest_rows = np.unique(manifest_rows)
        names = [
            f"{self.manifest.column('sample_id')[int(row)].as_py()} (writer {self._writers[self._writer_codes[row]]} "
            f"row {self._rows[row]})"
            for row in manifest_rows[:shown]
        ]
        more = f" and {len(manifest_rows) - shown} more" if len(manifest_rows) > shown else ""
        return f"row{'s' if len(manifest_rows) > 1 else ''} {', '.join(names)}{more}"

    def check_arrays(self) -> None:
        """Open and vet the metadata of every array the manifest points to (raises on a missing or
        damaged one) without reading rows: what `teacher-cache info` checks."""
        for writer in self._writers:
            for field in self.fields:
                self._array(writer, field)

    def _spec(self, field: str) -> FieldSpec:
        if field not in self.fields:
            raise DistillCacheError(
                f"the store has no field {field!r}; it has {', '.join(self.fields)} "
                "(`teacher-cache info STORE` lists them)"
            )
        return self.fields[field]

    def _check_rows(self, rows: Sequence[int]) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.manifest.num_rows):
            raise DistillCacheError(
                f"row indices must lie in [0, {self.manifest.num_rows}); got {rows.min()}..{rows.max()}"
            )
        return rows

    @staticmethod
    def _check_steps(spec: FieldSpec, steps: Sequence[int] | None) -> tuple[np.ndarray | None, tuple]:
        """(steps relative to the slice read, the slice over the first per-sample axis) or (None, ())."""
        if steps is None:
            return None, ()
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        if not spec.shape or len(steps) == 0 or steps.min() < 0 or steps.max() >= spec.shape[0]:
            raise DistillCacheError(
                f"steps must be a non-empty list in [0, {spec.shape[:1]}) of a per-step field"
            )
        low, high = int(steps.min()), int(steps.max()) + 1
        return steps - low, (slice(low, high),)

    def _array(self, writer: str, field: str):
        key = (writer, field)
        if key not in self._arrays:
            expected = self._array_digests.get(writer, {}).get(field)
            if expected is None:
                raise DistillCacheError(
                    f"{self.location.url}: the manifest of writer {writer!r} records no description of array "
                    f"{field!r}; the store is damaged"
                )
            array = zarr_arrays.open_array(
                self.location, self._zarr_store, writer, field, self.fields[field], expected
            )
            if array is None:
                raise DamagedRowsError(
                    f"{self.location.url}: the manifest names rows of writer {writer!r} but its array {field!r} "
                    "is missing; the store is damaged (`teacher-cache verify STORE` lists the rows)",
                    f"array {field!r} of writer {writer!r} is missing",
                )
            used = self._rows[self._writer_codes == self._writers.index(writer)]
            if used.max() >= array.shape[0]:
                raise DamagedRowsError(
                    f"{self.location.url}: the manifest names row {used.max()} of writer {writer!r}, beyond its "
                    f"{array.shape[0]} rows of {field!r}; the store is damaged",
                    f"array {field!r} of writer {writer!r} holds only {array.shape[0]} rows",
                )
            self._arrays[key] = array
        return self._arrays[key]
