"""The manifest's row order (shared/store/manifest_rows.py) against pyarrow's own sort_by, on both of
sorted_rows' paths: a full sort, and the binary-search merge of a few new rows (at most MERGE_BELOW of
the table) into a large sorted table, the path a team store takes when a few commits follow its
compacted file. Store tests are too small to reach the merge otherwise."""

import pyarrow as pa
import pytest

from shared.store.manifest_rows import MERGE_BELOW, SORT_KEYS, sorted_rows


def rows_of(ids: list[str], writer: str) -> pa.Table:
    return pa.table({"sample_id": ids, "writer": [writer] * len(ids), "row": list(range(len(ids)))})


BASE = rows_of([f"{index:04d}" for index in range(0, 200, 2)], "a")  # 100 sorted rows, even ids


@pytest.mark.parametrize(
    "new_ids",
    [
        ["0001", "0051", "0199"],  # between base rows
        ["0151", "0003"],  # given out of order
        ["-", "0000a", "zzzz"],  # before the first, right after one, after the last
        ["0004", "0101"],  # "0004" is also a base id: the merge gives way to a full sort
        ["0199", "0199", "0199", "0199", "0199"],  # the most a merge takes: MERGE_BELOW of 100 rows
    ],
)
def test_new_rows_land_where_a_full_sort_puts_them(new_ids):
    assert len(new_ids) <= MERGE_BELOW * BASE.num_rows
    new = rows_of(new_ids, "b")
    for tables in ([BASE, new], [new, BASE]):  # the largest table is the base, wherever it is listed
        assert sorted_rows(tables).equals(pa.concat_tables([BASE, new]).sort_by(SORT_KEYS))


def test_more_new_rows_than_a_merge_takes_are_sorted_with_the_rest():
    new = rows_of([f"{index:04d}" for index in range(1, 13, 2)], "b")  # 6 rows: more than 5 %
    assert sorted_rows([BASE, new]).equals(pa.concat_tables([BASE, new]).sort_by(SORT_KEYS))
