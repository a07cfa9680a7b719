"""verify_store: recompute every committed row's per-field checksum and list the rows that differ.

    bad = verify_store("runs/cache")   # [{"sample_id", "writer", "row", "field", "reason"}, ...]; [] when clean

Opening the store checks store.json and every manifest file against their digests; a store refused
as a whole (damaged metadata, a symlink, unsafe array metadata, an unreachable store) raises
DistillCacheError with the reason. Rows are then read in their physical order, a block at a time,
unverified, and checked here; a block that cannot even be decoded is re-read row by row, so a
damaged chunk names exactly the rows it holds. `reason`: "checksum mismatch" or why the row could
not be read.
"""

import json
import os

import numpy as np

from shared.errors import DistillCacheError
from shared.store import arrays as zarr_arrays
from shared.store.checksum import checksum_column, row_checksums
from shared.store.reader import DamagedRowsError, StoreReader

BLOCK_BYTES = 64 * 1024 * 1024
MISMATCH = "checksum mismatch"


GROUP_METADATA = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def verify_store(url: str | os.PathLike) -> list[dict]:
    reader = StoreReader(url, verify=False)
    check_group_metadata(reader)
    manifest = reader.manifest
    physical_order = np.lexsort(
        (manifest.column("row").to_numpy(), manifest.column("writer").to_numpy(zero_copy_only=False))
    )
    bad = []
    for field, spec in reader.fields.items():
        expected = manifest.column(checksum_column(field)).to_numpy()
        block_rows = max(1, BLOCK_BYTES // spec.sample_nbytes)
        for start in range(0, len(physical_order), block_rows):
            block = physical_order[start : start + block_rows]
            for row, reason in _check_block(reader, field, block, expected[block]):
                if reason:
                    bad.append({**_describe(manifest, int(row), field), "reason": reason})
    return sorted(bad, key=lambda entry: (entry["writer"], entry["row"], entry["field"]))


def check_group_metadata(reader: StoreReader) -> None:
    """The Zarr group descriptions (zarr.json of the store, of groups/ and of each writer's group) are
    not read for data, but verify passes no damaged file: each must be the one distillcache writes."""
    for folder in ("", zarr_arrays.GROUPS, *(f"{zarr_arrays.GROUPS}/{writer}" for writer in reader.writers)):
        relative = f"{folder}/zarr.json".lstrip("/")
        if not reader.location.exists(relative):
            continue
        try:
            content = json.loads(reader.location.read_bytes(relative))
        except (ValueError, UnicodeDecodeError):
            content = None
        if content != GROUP_METADATA:
            raise DistillCacheError(
                f"{reader.location.url}/{relative} is not the group description distillcache writes; the store "
                "is damaged there (no data depends on it): restore it from a good copy of the store"
            )


def _check_block(reader: StoreReader, field: str, rows: np.ndarray, expected: np.ndarray):
    """(row, reason it is bad or None) for each row of a block."""
    try:
        actual = np.asarray(row_checksums(reader.read_stored(field, rows)))
        return [(row, None if ok else MISMATCH) for row, ok in zip(rows, actual == expected)]
    except DamagedRowsError:  # narrow it down to the rows that cannot be read
        return [(row, _row_problem(reader, field, row, wanted)) for row, wanted in zip(rows, expected)]


def _row_problem(reader: StoreReader, field: str, row: int, expected: int) -> str | None:
    try:
        return None if row_checksums(reader.read_stored(field, [row]))[0] == expected else MISMATCH
    except DamagedRowsError as error:
        return error.reason


def _describe(manifest, row: int, field: str) -> dict:
    return {
        "sample_id": manifest.column("sample_id")[row].as_py(),
        "writer": manifest.column("writer")[row].as_py(),
        "row": manifest.column("row")[row].as_py(),
        "field": field,
    }
