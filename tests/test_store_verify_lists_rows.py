"""verify_store names exactly the damaged rows, in (writer, row, field) order, whatever the block size
it reads with: rows rewritten with other (well-encoded) values are checksum mismatches, a shard that
cannot be decoded names the rows it holds and no other.

    .venv/bin/python -m pytest tests/test_store_verify_lists_rows.py -q
"""

import numpy as np
import pytest
import zarr

from shared.errors import DistillCacheError
from shared.store import StoreReader, verify_store
from shared.store import verify as verify_module
from tests.small_store import FIELDS, small_ids, write_small

MISMATCH = "checksum mismatch"


def rewrite_row(store, writer: str, field: str, row: int) -> None:
    """Store other values at `row`, properly encoded: only the manifest's checksum can tell."""
    array = zarr.open_array(str(store / "groups" / writer / field), mode="r+")
    array[row] = np.asarray(array[row]) + np.asarray(1, dtype=array.dtype)


def expected_entry(store, writer: str, row: int, field: str, reason: str) -> dict:
    manifest = StoreReader(store, verify=False).manifest
    at = [
        position
        for position, (name, number) in enumerate(
            zip(manifest.column("writer").to_pylist(), manifest.column("row").to_pylist())
        )
        if (name, number) == (writer, row)
    ]
    (position,) = at
    sample_id = manifest.column("sample_id")[position].as_py()
    return {"sample_id": sample_id, "writer": writer, "row": row, "field": field, "reason": reason}


@pytest.mark.parametrize("block_bytes", [64 * 1024 * 1024, 96 * 2, 1])  # one block, 2-row blocks, 1 row
def test_verify_lists_every_rewritten_row_sorted_by_writer_row_field(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(verify_module, "BLOCK_BYTES", block_bytes)
    store = tmp_path / "store"
    write_small(store, range(0, 7), batch_size=3, writer_id="b-writer")
    write_small(store, range(7, 12), batch_size=5, writer_id="a-writer")
    assert sorted(small_ids(range(12))) == sorted(StoreReader(store).manifest.column("sample_id").to_pylist())
    damaged = [
        ("b-writer", "latents", 4),
        ("a-writer", "label", 3),
        ("b-writer", "label", 4),
        ("b-writer", "latents", 0),
        ("a-writer", "latents", 0),  # the first row verify reads
    ]
    for writer, field, row in damaged:
        rewrite_row(store, writer, field, row)
    expected = [
        expected_entry(store, writer, row, field, MISMATCH)
        for writer, row, field in sorted((writer, row, field) for writer, field, row in damaged)
    ]
    assert verify_store(store) == expected


def test_an_undecodable_shard_names_the_rows_it_holds_beside_a_mismatch_in_the_same_block(
    tmp_path, monkeypatch
):
    store = tmp_path / "store"
    write_small(store, range(9), batch_size=3, writer_id="w")  # shards of 3 rows: rows 0-2, 3-5, 6-8
    monkeypatch.setattr(verify_module, "BLOCK_BYTES", 1024 * 1024)  # one block: all 9 rows read at once
    rewrite_row(store, "w", "latents", 7)  # decodes, but not to what was committed
    shard = store / "groups" / "w" / "latents" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the one chunk of rows 3-5
    shard.write_bytes(bytes(data))
    bad = verify_store(store)
    undecodable = bad[0]["reason"]
    assert undecodable != MISMATCH
    assert bad == [
        *(expected_entry(store, "w", row, "latents", undecodable) for row in (3, 4, 5)),
        expected_entry(store, "w", 7, "latents", MISMATCH),
    ]


def test_a_clean_store_verifies_with_any_block_size(tmp_path, monkeypatch):
    store = tmp_path / "store"
    write_small(store, range(5), batch_size=2)
    for block_bytes in (1, 200, 10**9):
        monkeypatch.setattr(verify_module, "BLOCK_BYTES", block_bytes)
        assert verify_store(store) == []
    assert set(FIELDS) == {"latents", "label"}


def test_each_group_description_is_checked_even_when_an_earlier_one_is_absent(tmp_path):
    store = tmp_path / "store"
    write_small(store, range(2), writer_id="w")
    (store / "zarr.json").unlink()  # not read for data: its absence is allowed
    assert verify_store(store) == []
    (store / "groups" / "w" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(DistillCacheError, match="groups/w/zarr.json is not the group description"):
        verify_store(store)
