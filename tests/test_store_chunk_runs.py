"""A read touches each chunk once: rows asked for in the same chunk come from one Zarr read (its cost
is per read, ~2-3 ms), with the rows between them read, never returned and never checked."""

import numpy as np
import pytest
import zarr

from shared.store import StoreReader
from shared.store import arrays as zarr_arrays
from shared.store.reader import DamagedRowsError
from tests.small_store import small_arrays, small_ids, write_small
from tests.store_fixtures import writer_groups


@pytest.mark.parametrize(
    "rows, chunk_rows, runs",
    [
        ([0, 1, 5, 63, 64, 70, 200], 64, [(0, 71), (200, 201)]),  # 63-64 is one run: it ends in chunk 1
        ([0, 1, 5, 63, 64, 70, 200], 1, [(0, 2), (5, 6), (63, 65), (70, 71), (200, 201)]),
        ([3, 4, 8, 9], 4, [(3, 5), (8, 10)]),  # 3-4 ends in chunk 1, 8 starts chunk 2
        ([], 8, []),
    ],
)
def test_runs_cover_each_chunk_once(rows, chunk_rows, runs):
    assert zarr_arrays.chunk_runs(np.asarray(rows), chunk_rows) == runs


@pytest.fixture
def store(tmp_path):
    """24 samples of one writer in two commits of 12: physical rows 0-11 and 12-23, 12 rows per chunk."""
    url = tmp_path / "store"
    write_small(url, range(24), batch_size=12)
    return url


def manifest_rows_at(reader: StoreReader, physical: list[int]) -> list[int]:
    row_of = reader.manifest.column("row").to_pylist()
    return [row_of.index(p) for p in physical]


def written_latents(reader: StoreReader, rows: list[int]) -> np.ndarray:
    """The latents each manifest row's sample was written with."""
    index_of = small_ids(range(24))
    ids = reader.manifest.column("sample_id").to_pylist()
    return np.stack([small_arrays(index_of[ids[row]])["latents"] for row in rows])


def test_rows_of_one_chunk_come_from_one_read(store, monkeypatch):
    reader = StoreReader(store)
    requests = []
    gather = zarr_arrays.gather
    monkeypatch.setattr(
        zarr_arrays, "gather", lambda awaitables: requests.append(len(awaitables)) or gather(awaitables)
    )
    rows = manifest_rows_at(reader, [11, 0, 5, 20, 13])  # chunks 0, 0, 0, 1, 1
    values = reader.read_stored("latents", rows)
    assert requests == [2]
    assert np.array_equal(values, written_latents(reader, rows))


@pytest.mark.parametrize("verify", [True, False])
def test_a_row_asked_for_twice_beside_a_gap_gets_its_own_values(store, verify):
    """Rows 3, 3, 5 of one chunk: the read run 3-5 holds as many rows as were asked for, but row 4 is
    not one of them, so the run cannot be taken as the answer whole."""
    reader = StoreReader(store, verify=verify)
    rows = manifest_rows_at(reader, [3, 3, 5])
    assert np.array_equal(reader.read_stored("latents", rows), written_latents(reader, rows))


def test_rows_read_between_those_asked_for_are_not_checked_and_those_asked_for_are(store):
    group = writer_groups(store)[0]
    latents = zarr.open_array(str(group / "latents"), mode="r+")
    latents[7] = latents[7] + 1  # a valid chunk holding a wrong row 7: only its checksum can tell
    reader = StoreReader(store)
    around = manifest_rows_at(reader, [5, 11])
    assert reader.read_stored("latents", around).shape == (2, 3, 4, 4)  # 7 is read with them, not used
    damaged = manifest_rows_at(reader, [7])[0]
    sample_id = reader.manifest.column("sample_id")[damaged].as_py()
    with pytest.raises(
        DamagedRowsError, match=rf"of row {sample_id} \(writer \S+ row 7\) does not match its checksum"
    ):
        reader.read_stored("latents", manifest_rows_at(reader, [5, 7, 11]))
