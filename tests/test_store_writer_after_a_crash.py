"""A writer id reopened on a group that a killed commit left half done: arrays created for some fields
only, or resized for some fields only. The next commit still writes every field, and only on rows after
everything the killed commit may have touched. And a commit that fails for another reason than
reaching the store raises that error unchanged (only access errors become the one-line store error).

    .venv/bin/python -m pytest tests/test_store_writer_after_a_crash.py -q
"""

import pytest
import zarr

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, verify_store
from shared.store import arrays as zarr_arrays
from shared.store.paths import StoreLocation
from tests.small_store import (
    FIELDS,
    assert_small_reads_back,
    commit_small,
    small_ids,
    small_writer,
    write_small,
)


def rows_of(url, writer: str) -> dict[int, int]:
    """{sample index: row} of `writer`'s committed rows."""
    manifest = StoreReader(url).manifest
    by_id = small_ids(range(100))
    return {
        by_id[sample_id]: row
        for sample_id, row, name in zip(
            manifest.column("sample_id").to_pylist(),
            manifest.column("row").to_pylist(),
            manifest.column("writer").to_pylist(),
        )
        if name == writer
    }


def test_a_group_with_only_some_arrays_gets_the_others_at_the_next_commit(tmp_path):
    url = tmp_path / "store"
    write_small(url, range(3), writer_id="other")  # the store exists
    location = StoreLocation.open(url)
    store = location.zarr_store(read_only=False)
    # killed while creating its arrays: "latents" exists, "label" does not
    zarr_arrays.create_array(store, "w", "latents", FIELDS["latents"], 2, zarr_arrays.Compression())
    commit_small(small_writer(url, writer_id="w"), [3, 4])
    assert rows_of(url, "w") == {3: 0, 4: 1}
    assert_small_reads_back(StoreReader(url), range(5))
    assert verify_store(url) == []


def test_rows_resized_for_one_field_only_are_never_written_again(tmp_path):
    url = tmp_path / "store"
    write_small(url, range(3), batch_size=3, writer_id="w")  # shards of 3 rows
    # killed after resizing "label" for a commit of rows 3-5, before the other field
    zarr.open_array(str(url / "groups" / "w" / "label"), mode="r+").resize((6,))
    commit_small(small_writer(url, writer_id="w"), [3, 4])
    assert rows_of(url, "w") == {0: 0, 1: 1, 2: 2, 3: 6, 4: 7}
    assert_small_reads_back(StoreReader(url), range(5))


def test_a_failure_that_is_not_an_access_error_is_raised_unchanged(tmp_path, monkeypatch):
    url = tmp_path / "store"
    writer = write_small(url, range(2), writer_id="w")

    def fail(*args):
        raise RuntimeError("a bug, not the store")

    monkeypatch.setattr(StoreWriter, "_publish_manifest", fail)
    with pytest.raises(RuntimeError, match="a bug, not the store"):
        commit_small(writer, [2, 3])

    def unreachable(*args):
        raise OSError("connection reset")

    monkeypatch.setattr(StoreWriter, "_publish_manifest", unreachable)
    with pytest.raises(
        DistillCacheError, match="cannot write to store .*connection reset.*nothing of this batch"
    ):
        commit_small(writer, [4, 5])
    assert_small_reads_back(StoreReader(url), range(2))
