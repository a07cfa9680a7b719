"""verify_store: recompute every committed row's per-field checksum and list the rows that differ.

    bad = verify_store("runs/cache")   # [{"sample_id", "writer", "row", "field"}, ...]; [] when clean

Rows are read in their physical order, a block at a time; a block whose chunks cannot even be
decoded is re-read row by row, so a damaged chunk names exactly the rows it holds.
"""

import os

import numpy as np

from shared.store.checksum import checksum_column, row_checksums
from shared.store.reader import StoreReader

BLOCK_BYTES = 64 * 1024 * 1024


def verify_store(url: str | os.PathLike) -> list[dict]:
    reader = StoreReader(url)
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
            for row, matches in _check_block(reader, field, block, expected[block]):
                if not matches:
                    bad.append(_describe(manifest, int(row), field))
    return sorted(bad, key=lambda entry: (entry["writer"], entry["row"], entry["field"]))


def _check_block(reader: StoreReader, field: str, rows: np.ndarray, expected: np.ndarray):
    """(row, checksum matches) for each row of a block."""
    try:
        actual = row_checksums(reader.read_stored(field, rows))
        return zip(rows, np.asarray(actual) == expected)
    except Exception:  # a corrupt chunk can fail inside any codec, with any error type: narrow it down
        return [(row, _row_matches(reader, field, row, wanted)) for row, wanted in zip(rows, expected)]


def _row_matches(reader: StoreReader, field: str, row: int, expected: int) -> bool:
    try:
        return row_checksums(reader.read_stored(field, [row]))[0] == expected
    except Exception:  # unreadable: the row is bad
        return False


def _describe(manifest, row: int, field: str) -> dict:
    return {
        "sample_id": manifest.column("sample_id")[row].as_py(),
        "writer": manifest.column("writer")[row].as_py(),
        "row": manifest.column("row")[row].as_py(),
        "field": field,
    }
