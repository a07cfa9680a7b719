"""StoreReader returns exactly the rows asked for, from stores of several writers and commits: values
compared with what each sample was written as (tests/store_fixtures.py), the storage order and splits
recomputed from the manifest's columns by hand, bad rows and steps refused, damaged rows named.

    .venv/bin/python -m pytest tests/test_store_reader_rows.py -q
"""

import json
import os

import numpy as np
import pytest
import torch

from shared.errors import DistillCacheError
from shared.store import StoreReader
from shared.store.reader import DamagedRowsError
from tests.small_store import small_ids, write_small
from tests.store_fixtures import expected_arrays, index_by_sample_id, write_samples, writer_groups


@pytest.fixture(scope="session")
def two_writer_store(tmp_path_factory):
    """12 samples from two writers, interleaved, in commits of 3 (every commit on fresh shards)."""
    url = tmp_path_factory.mktemp("store") / "store"
    write_samples(url, [0, 2, 4, 6, 8, 10], batch_size=3, writer_id="alice")
    write_samples(url, [1, 3, 5, 7, 9, 11], batch_size=3, writer_id="bob")
    return url


def expected_rows(reader, rows, field, steps=None) -> torch.Tensor:
    by_id = index_by_sample_id(range(12))
    values = [
        expected_arrays(by_id[reader.manifest.column("sample_id")[int(row)].as_py()])[field] for row in rows
    ]
    stacked = torch.stack(values)
    return stacked if steps is None else stacked[:, steps]


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize(
    "rows", [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [11, 3, 3, 0, 7], [5], [2, 9, 4, 10], []]
)
def test_any_rows_of_two_writers_read_back_as_written(two_writer_store, rows, verify):
    reader = StoreReader(two_writer_store, verify=verify)
    assert reader.writers == ["alice", "bob"] or reader.writers == ["bob", "alice"]
    for field in ("trajectory", "cond.encoder_hidden_states", "token_count"):
        values = reader.read(field, rows)
        assert values.shape == (len(rows), *reader.fields[field].shape)
        if rows:
            assert torch.equal(values, expected_rows(reader, rows, field))


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("steps", [[3], [5, 0, 3], [2, 2], [1, 2, 3, 4]])
def test_steps_of_any_rows_read_back_with_and_without_verification(two_writer_store, steps, verify):
    reader = StoreReader(two_writer_store, verify=verify)
    rows = [10, 1, 6, 6, 3]
    values = reader.read("trajectory", rows, steps=steps)
    assert values.shape == (len(rows), len(steps), 4, 8, 8)
    assert torch.equal(values, expected_rows(reader, rows, "trajectory", steps))


def test_storage_order_is_writer_group_then_row(two_writer_store):
    reader = StoreReader(two_writer_store)
    writers = reader.manifest.column("writer").to_pylist()
    physical = reader.manifest.column("row").to_pylist()
    code = {writer: reader.writers.index(writer) for writer in set(writers)}
    rows = [11, 0, 5, 5, 8, 2, 9]
    expected = sorted(rows, key=lambda row: (code[writers[row]], physical[row]))
    assert reader.in_storage_order(rows).tolist() == expected
    assert reader.in_storage_order([]).tolist() == []


def test_writers_are_those_of_the_manifest_and_a_copy(two_writer_store):
    reader = StoreReader(two_writer_store)
    in_order = list(dict.fromkeys(reader.manifest.column("writer").to_pylist()))
    assert reader.writers == in_order and sorted(in_order) == ["alice", "bob"]
    reader.writers.append("mallory")
    assert reader.writers == in_order


def test_splits_are_the_manifest_rows_with_that_split(two_writer_store):
    reader = StoreReader(two_writer_store)
    splits = reader.manifest.column("split").to_pylist()
    for split in ("train", "val"):
        expected = [row for row, value in enumerate(splits) if value == split]
        assert reader.indices(split).tolist() == expected
    assert sorted(reader.indices("train").tolist() + reader.indices("val").tolist()) == list(range(12))
    assert reader.indices().tolist() == list(range(12)) and len(reader) == 12


def test_nbytes_counts_every_file_of_the_store(two_writer_store):
    total = sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(two_writer_store)
        for name in names
    )
    assert StoreReader(two_writer_store).nbytes == total


@pytest.mark.parametrize("rows", [[-1], [12], [0, 12], [3, -2]])
def test_rows_outside_the_manifest_are_refused(two_writer_store, rows):
    reader = StoreReader(two_writer_store)
    with pytest.raises(DistillCacheError, match=r"row indices must lie in \[0, 12\); got "):
        reader.read("trajectory", rows)


@pytest.mark.parametrize(
    "field, steps", [("trajectory", []), ("trajectory", [-1]), ("trajectory", [6]), ("token_count", [0])]
)
def test_steps_outside_a_per_step_field_are_refused(two_writer_store, field, steps):
    reader = StoreReader(two_writer_store)
    with pytest.raises(DistillCacheError, match="steps must be a non-empty list"):
        reader.read(field, [0], steps=steps)


def test_an_unknown_field_names_the_fields_there_are(two_writer_store):
    reader = StoreReader(two_writer_store)
    with pytest.raises(DistillCacheError) as error:
        reader.read("features.mid_block", [0])
    assert str(error.value) == (
        f"the store has no field 'features.mid_block'; it has {', '.join(reader.fields)} "
        "(`teacher-cache info STORE` lists them)"
    )


def named(reader, row: int) -> str:
    """How an error line names a manifest row, spelled out from the manifest's columns."""
    column = reader.manifest.column
    return f"{column('sample_id')[row].as_py()} (writer {column('writer')[row].as_py()} row {column('row')[row].as_py()})"


def test_damaged_rows_are_named_three_at_most_then_counted(tmp_path):
    write_small(tmp_path / "store", range(5), batch_size=5)  # one shard per field holds all 5 rows
    (group,) = writer_groups(tmp_path / "store")
    for shard in [path for path in (group / "latents" / "c").rglob("*") if path.is_file()]:
        shard.unlink()  # every row reads as the fill value
    reader = StoreReader(tmp_path / "store")
    with pytest.raises(DamagedRowsError) as error:
        reader.read("latents", [4, 0, 2, 1, 3])
    first_three = ", ".join(named(reader, row) for row in range(3))
    assert f"field 'latents' of rows {first_three} and 2 more does not match its checksum" in str(error.value)
    assert error.value.reason == "checksum mismatch"
    with pytest.raises(DamagedRowsError) as error:
        reader.read("latents", [3])
    assert f"field 'latents' of row {named(reader, 3)} does not match" in str(error.value)
    with pytest.raises(DamagedRowsError) as error:
        reader.read("latents", [2, 1, 2])
    assert f"field 'latents' of rows {named(reader, 1)}, {named(reader, 2)} does not match" in str(
        error.value
    )
    with pytest.raises(DamagedRowsError) as error:
        reader.read("latents", [1, 2, 0])
    assert f"of rows {first_three} does not match" in str(error.value)
    index = small_ids(range(5))[reader.manifest.column("sample_id")[1].as_py()]
    assert reader.read("label", [1]).tolist() == [index * 7 - 3]  # the other field is intact
    StoreReader(tmp_path / "store", verify=False).read("latents", [0, 1])  # unchecked: fill values, no error


def test_a_missing_array_is_named_by_check_arrays(tmp_path):
    write_small(tmp_path / "store", range(3))
    (group,) = writer_groups(tmp_path / "store")
    reader = StoreReader(tmp_path / "store")
    reader.check_arrays()  # every array there
    for path in sorted((group / "label").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (group / "label").rmdir()
    with pytest.raises(DamagedRowsError) as error:
        StoreReader(tmp_path / "store").check_arrays()
    assert str(error.value) == (
        f"{tmp_path / 'store'}: the manifest names rows of writer {group.name!r} but its array 'label' is missing; "
        "the store is damaged (`teacher-cache verify STORE` lists the rows)"
    )
    assert error.value.reason == f"array 'label' of writer {group.name!r} is missing"


def test_a_chunk_that_cannot_be_decoded_names_its_rows_and_the_codecs_error(two_writer_store, monkeypatch):
    reader = StoreReader(two_writer_store)

    def undecodable(requests):
        for request in requests:
            request.close()  # the coroutines that were not awaited
        raise RuntimeError("bad zstd frame\nsecond line")

    monkeypatch.setattr("shared.store.reader.zarr_arrays.gather", undecodable)
    with pytest.raises(DamagedRowsError) as error:
        reader.read("trajectory", [4])
    assert str(error.value) == (
        f"{reader.location.url}: field 'trajectory' of row {named(reader, 4)} cannot be decoded "
        "(RuntimeError: bad zstd frame); the store is damaged: `teacher-cache verify STORE` lists every "
        "damaged row; recapture them into a fresh store or restore the store from a good copy"
    )
    assert error.value.reason == "cannot be decoded (RuntimeError: bad zstd frame)"


def test_an_unreachable_store_is_not_called_damaged(two_writer_store, monkeypatch):
    reader = StoreReader(two_writer_store)
    refusal = DistillCacheError("a refusal of our own, passed on as it is")

    def failing(error):
        def gather(requests):
            for request in requests:
                request.close()
            raise error

        return gather

    monkeypatch.setattr("shared.store.reader.zarr_arrays.gather", failing(PermissionError("no access\nmore")))
    with pytest.raises(DistillCacheError) as error:
        reader.read("trajectory", [4])
    assert not isinstance(error.value, DamagedRowsError)
    assert str(error.value) == (
        f"cannot read field 'trajectory' of {reader.location.url} (no access); check that the store is reachable"
    )
    monkeypatch.setattr("shared.store.reader.zarr_arrays.gather", failing(refusal))
    with pytest.raises(DistillCacheError) as error:
        reader.read("trajectory", [4])
    assert error.value is refusal


def test_a_folder_that_is_not_a_store_is_one_line(tmp_path):
    with pytest.raises(DistillCacheError) as error:
        StoreReader(tmp_path)
    assert str(error.value) == (
        f"{tmp_path} is not a distillcache store (no store.json); make one with `teacher-cache run --out STORE`"
    )


def test_a_reader_describes_the_store_it_opened(two_writer_store):
    from tests.store_fixtures import FIELDS, FINGERPRINT, SETTINGS, TEACHER

    reader = StoreReader(two_writer_store)
    assert (reader.fingerprint, reader.teacher, reader.settings, reader.fields) == (
        FINGERPRINT,
        TEACHER,
        SETTINGS,
        FIELDS,
    )
    assert (
        reader.format_version == 2
        and reader.verify is True
        and StoreReader(two_writer_store, verify=False).verify is False
    )
    assert reader.cache is None and reader.cache_note == ""  # a local store is read directly
    assert reader.duplicates.num_rows == 0


def test_an_array_description_edited_after_its_commit_is_refused(tmp_path):
    write_small(tmp_path / "store", range(3))
    (group,) = writer_groups(tmp_path / "store")
    path = group / "latents" / "zarr.json"
    metadata = json.loads(path.read_text())
    metadata["attributes"] = {**metadata.get("attributes", {}), "edited": True}
    path.write_text(json.dumps(metadata))
    reader = StoreReader(tmp_path / "store")
    assert reader.read("label", [0, 1, 2]).shape == (3,)  # the other array is as recorded
    with pytest.raises(
        DistillCacheError, match="latents/zarr.json does not match the description its manifests"
    ):
        reader.read("latents", [0])


def test_rows_of_a_writer_whose_manifest_records_no_array_description_are_refused(tmp_path):
    write_small(tmp_path / "store", range(3))
    reader = StoreReader(tmp_path / "store")
    (writer,) = reader.writers
    reader._array_digests = {}  # as read from a manifest that records no description of its arrays
    with pytest.raises(DistillCacheError) as error:
        reader.read("latents", [0])
    assert str(error.value) == (
        f"{reader.location.url}: the manifest of writer {writer!r} records no description of array 'latents'; "
        "the store is damaged"
    )


def test_a_manifest_row_beyond_its_array_is_refused(tmp_path):
    write_small(tmp_path / "store", range(5), batch_size=5)
    (group,) = writer_groups(tmp_path / "store")
    array_rows = json.loads((group / "latents" / "zarr.json").read_text())["shape"][0]
    assert array_rows == 5  # sized to the rows committed, not to a whole shard
    reader = StoreReader(tmp_path / "store")
    reader._rows = reader._rows.copy()
    reader._rows[1] = array_rows  # as named by a manifest row one past the array's end
    with pytest.raises(DamagedRowsError) as error:
        reader.read("latents", [0])
    assert str(error.value) == (
        f"{reader.location.url}: the manifest names row {array_rows} of writer {group.name!r}, beyond its "
        f"{array_rows} rows of 'latents'; the store is damaged"
    )
    assert error.value.reason == f"array 'latents' of writer {group.name!r} holds only {array_rows} rows"
    reader._rows[1] = array_rows - 1  # the last row of the array: read
    assert reader.read("latents", [0]).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("verify", [True, False])
def test_one_step_may_be_given_as_a_number(two_writer_store, verify):
    reader = StoreReader(two_writer_store, verify=verify)
    for step in (3, np.int64(3), torch.tensor(3)):
        values = reader.read("trajectory", [7, 2], steps=step)
        assert values.shape == (2, 1, 4, 8, 8)
        assert torch.equal(values, expected_rows(reader, [7, 2], "trajectory", [3]))


def test_one_row_may_be_given_as_a_number(two_writer_store):
    reader = StoreReader(two_writer_store)
    for row in (5, np.int64(5), torch.tensor(5)):
        values = reader.read("token_count", row)
        assert values.shape == (1,) and torch.equal(values, expected_rows(reader, [5], "token_count"))
    assert reader.in_storage_order(5).tolist() == [5]
