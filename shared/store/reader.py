"""StoreReader: the committed rows of a store, from a local folder or any fsspec URL.

    reader = StoreReader("runs/cache")                      # or "s3://bucket/cache", "memory://cache"
    reader.fields["trajectory"]                             # FieldSpec("float16", (51, 4, 64, 64))
    rows = reader.indices("train")                          # row indices into reader.manifest
    x = reader.read("trajectory", rows[:64], steps=[10])    # (64, 1, 4, 64, 64) float16
    e = reader.read("cond.encoder_hidden_states", rows[:64])  # (64, 77, 768)

`manifest` holds committed rows only, sorted by sample_id. A read is batched: the rows are grouped
by writer group into contiguous runs, and every run of every group is fetched in one round trip to
Zarr (whole chunks; see shared.store.arrays), so the cost does not grow with one call per sample.
"""

import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from shared.errors import DistillCacheError
from shared.store import arrays as zarr_arrays
from shared.store.dtypes import from_storage, storage_dtype
from shared.store.format import read_metadata
from shared.store.manifest import read_manifest
from shared.store.paths import StoreLocation
from shared.store.schema import FieldSpec


class StoreReader:
    def __init__(self, url: str | os.PathLike):
        self.location = StoreLocation.open(url)
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
        self.manifest: pa.Table = read_manifest(self.location, list(self.fields))
        self._writers: list[str] = pc.unique(self.manifest.column("writer")).to_pylist()
        writer_index = {name: code for code, name in enumerate(self._writers)}
        self._writer_codes = np.array(
            [writer_index[name] for name in self.manifest.column("writer").to_pylist()]
        )
        self._rows = self.manifest.column("row").to_numpy().astype(np.int64)
        self._zarr_store = self.location.zarr_store(read_only=True)
        self._arrays: dict[tuple[str, str], object] = {}

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

    def read(self, field: str, rows: Sequence[int], steps: Sequence[int] | None = None) -> torch.Tensor:
        """(len(rows), *shape), or with `steps` (len(rows), len(steps), *shape[1:]); the field's real dtype."""
        return from_storage(self.read_stored(field, rows, steps), self.fields[field].dtype)

    def read_stored(self, field: str, rows: Sequence[int], steps: Sequence[int] | None = None) -> np.ndarray:
        """As `read`, but the stored numpy values (bfloat16 as its uint16 bits)."""
        spec = self._spec(field)
        rows = self._check_rows(rows)
        step_index, step_slice = self._check_steps(spec, steps)
        out_shape = spec.shape if step_index is None else (len(step_index), *spec.shape[1:])
        out = np.empty((len(rows), *out_shape), dtype=storage_dtype(spec.dtype))
        placements, requests = [], []
        for code in np.unique(self._writer_codes[rows]):
            positions = np.flatnonzero(self._writer_codes[rows] == code)
            physical = self._rows[rows[positions]]
            order = np.argsort(physical, kind="stable")
            array = self._array(self._writers[code], field)
            for start, stop in zarr_arrays.contiguous_runs(np.unique(physical)):
                requests.append(array.getitem((slice(start, stop), *step_slice)))
                taken = order[
                    np.searchsorted(physical[order], start) : np.searchsorted(physical[order], stop)
                ]
                placements.append((positions[taken], physical[taken] - start))
        for (destination, offsets), values in zip(placements, zarr_arrays.gather(requests)):
            if step_index is not None:
                out[destination] = values[offsets[:, None], step_index]
            elif len(offsets) == len(values) and np.array_equal(offsets, np.arange(len(values))):
                out[destination] = values  # the run read is exactly the rows wanted: no extra copy
            else:
                out[destination] = values[offsets]
        return out

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
            array = zarr_arrays.open_array(self.location, self._zarr_store, writer, field, self.fields[field])
            if array is None:
                raise DistillCacheError(
                    f"{self.location.url}: the manifest names rows of writer {writer!r} but its array {field!r} "
                    "is missing; the store is damaged (`teacher-cache verify STORE` lists the rows)"
                )
            used = self._rows[self._writer_codes == self._writers.index(writer)]
            if used.max() >= array.shape[0]:
                raise DistillCacheError(
                    f"{self.location.url}: the manifest names row {used.max()} of writer {writer!r}, beyond its "
                    f"{array.shape[0]} rows of {field!r}; the store is damaged"
                )
            self._arrays[key] = array
        return self._arrays[key]
