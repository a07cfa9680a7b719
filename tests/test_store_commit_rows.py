"""Where a commit's rows land and what its manifest file says about them, against values computed here:
row numbers (each commit on a fresh shard), the CRC-32C of each row's bytes, the default split share,
and the resume path (`committed_manifest` read once, handed to the writer).

    .venv/bin/python -m pytest tests/test_store_commit_rows.py -q
"""

import os
import re

import crc32c
import numpy as np
import pyarrow.parquet as pq
import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, committed_manifest, split_for
from shared.store.ids import sample_id_for
from shared.store.manifest import ManifestFiles
from tests.small_store import (
    FIELDS,
    FINGERPRINT,
    SETTINGS,
    TEACHER,
    assert_small_reads_back,
    commit_small,
    small_arrays,
    small_ids,
    small_row,
    small_writer,
    write_small,
)


def rows_by_index(url) -> dict[int, int]:
    """{sample index: row in its writer's arrays} as the manifest records it."""
    manifest = StoreReader(url).manifest
    by_id = small_ids(range(100))
    return {
        by_id[sample_id]: row
        for sample_id, row in zip(
            manifest.column("sample_id").to_pylist(), manifest.column("row").to_pylist()
        )
    }


def test_each_commit_starts_on_the_first_row_of_a_fresh_shard(tmp_path):
    url = tmp_path / "store"
    writer = small_writer(url, writer_id="rank0")
    commit_small(writer, range(0, 4))  # the first commit sets the shard size: 4 rows
    commit_small(writer, range(4, 7))  # rows 4-6, shard 1 not full
    commit_small(writer, range(7, 8))  # shard 2: row 8
    commit_small(writer, range(8, 13))  # 5 rows: shards 3 and 4, rows 12-16
    again = small_writer(url, writer_id="rank0")  # the same group reopened: after every shard used
    commit_small(again, range(13, 15))
    expected = {**{i: i for i in range(7)}, 7: 8, **{i: i + 4 for i in range(8, 13)}, 13: 20, 14: 21}
    assert rows_by_index(url) == expected
    assert_small_reads_back(StoreReader(url), range(15))


def test_one_row_commits_use_one_row_shards(tmp_path):
    url = tmp_path / "store"
    writer = small_writer(url, writer_id="single")
    for index in range(3):
        commit_small(writer, [index])
    assert rows_by_index(url) == {0: 0, 1: 1, 2: 2}
    assert_small_reads_back(StoreReader(url), range(3))


def test_manifest_checksums_are_the_crc32c_of_each_rows_bytes(tmp_path):
    url = tmp_path / "store"
    write_small(url, range(6), batch_size=3)
    manifest = StoreReader(url).manifest
    by_id = small_ids(range(6))
    for name in FIELDS:
        for sample_id, checksum in zip(
            manifest.column("sample_id").to_pylist(), manifest.column(f"checksum_{name}").to_pylist()
        ):
            expected_bytes = np.ascontiguousarray(small_arrays(by_id[sample_id])[name]).tobytes()
            assert checksum == crc32c.crc32c(expected_bytes), (name, sample_id)


def test_a_store_without_val_fraction_puts_a_tenth_in_val(tmp_path):
    url = tmp_path / "store"
    settings = {key: value for key, value in SETTINGS.items() if key != "val_fraction"}
    writer = StoreWriter(url, fingerprint=FINGERPRINT, teacher=TEACHER, settings=settings, fields=FIELDS)
    commit_small(writer, range(40))
    manifest = StoreReader(url).manifest
    ids = manifest.column("sample_id").to_pylist()
    assert manifest.column("split").to_pylist() == [split_for(sample_id, 0.1) for sample_id in ids]
    assert 0 < manifest.column("split").to_pylist().count("val") < 40 * 0.25  # not 0.25, not 0


def test_a_resume_reads_the_manifest_once_and_the_writer_continues_from_it(tmp_path):
    url = tmp_path / "store"
    assert committed_manifest(url) is None
    write_small(url, range(5), batch_size=2)
    manifest = committed_manifest(url)
    assert set(manifest.sample_ids()) == set(small_ids(range(5)))
    assert sorted(manifest.fields) == sorted(FIELDS)
    # the writer takes it as its own manifest: ids committed since are read from the new files only
    writer = small_writer(url, manifest=manifest)
    assert writer.committed_ids is manifest.sample_ids()  # the files read once, not read again
    write_small(url, range(5, 8), batch_size=3)  # another writer
    commit_small(writer, [8, 9])
    assert set(writer.committed_ids) == set(small_ids(range(10)))
    assert_small_reads_back(StoreReader(url), range(10))


def test_a_writer_refuses_a_manifest_read_elsewhere_or_otherwise(tmp_path):
    url, other = tmp_path / "store", tmp_path / "other"
    write_small(url, range(2))
    write_small(other, range(2))
    with pytest.raises(ValueError, match="committed_manifest"):
        small_writer(url, manifest=committed_manifest(other))
    location = committed_manifest(url).location
    every_column = ManifestFiles(location, list(FIELDS), all_columns=True)
    with pytest.raises(ValueError, match="committed_manifest"):
        small_writer(url, manifest=every_column)
    one_field = ManifestFiles(location, ["latents"], all_columns=False)
    with pytest.raises(ValueError, match="committed_manifest"):
        small_writer(url, manifest=one_field)


def test_the_manifest_file_holds_the_commits_rows_in_the_order_given(tmp_path):
    url = tmp_path / "store"
    writer = small_writer(url, writer_id="w")
    order = [5, 2, 9]
    commit_small(writer, order)
    (path,) = (url / "manifest").glob("w-*.parquet")
    table = pq.read_table(path)
    assert path.name.startswith("w-000000000000-")
    assert table.column("sample_id").to_pylist() == [small_row(index)["sample_id"] for index in order]
    assert table.column("row").to_pylist() == [0, 1, 2]
    assert table.column("writer").to_pylist() == ["w"] * 3
    assert table.column("seed").to_pylist() == order
    assert small_row(5)["sample_id"] == sample_id_for(FINGERPRINT, small_row(5)["prompt"], "", 5, 2.0)


def test_a_store_of_a_single_field_commits_and_reads_back(tmp_path):
    url = tmp_path / "store"
    fields = {"label": FIELDS["label"]}
    writer = StoreWriter(url, fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=fields)
    for start in (0, 3):
        indices = range(start, start + 3)
        writer.commit([small_row(index) for index in indices], {"label": np.arange(start, start + 3) * 7 - 3})
    reader = StoreReader(url)
    labels = reader.read_stored("label", np.arange(len(reader)))
    by_id = small_ids(range(6))
    assert [
        by_id[sample_id] * 7 - 3 for sample_id in reader.manifest.column("sample_id").to_pylist()
    ] == list(labels)


@pytest.mark.parametrize("writer_id", ["../up", "a/b", ".hidden", ""])
def test_an_unsafe_writer_id_is_refused_naming_it(tmp_path, writer_id):
    if not writer_id:  # empty: a fresh id is made, w<pid>-<random hex>
        assert re.fullmatch(rf"w{os.getpid()}-[0-9a-f]+", small_writer(tmp_path / "store").writer_id)
        return
    with pytest.raises(DistillCacheError, match=f"writer id {re.escape(repr(writer_id))} is not allowed"):
        small_writer(tmp_path / "store", writer_id=writer_id)
    assert not (tmp_path / "store").exists()
