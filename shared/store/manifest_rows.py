"""The rows of many manifest files as one table: sorted, each physical row once, each sample once.

    table = sorted_rows(tables)                   # sorted by (sample_id, writer, row)
    table = without_repeats(table, checksums)     # a row listed by two files (compaction) kept once
    first, duplicates = split_duplicates(table)   # a sample committed by two racing writers: first kept

A physical row is (writer, row): one place in one writer's arrays. Compaction copies rows into a new
file before the files it replaces are removed, so a reader may list a row twice (in a compacted file
and in a file it replaces, or in two compactions made at once); `without_repeats` keeps it once. Two
rows of one sample at different places are duplicates of racing writers (`split_duplicates`).

Costs at 10^6 rows (the open of a compacted store): a compacted manifest is written sorted, so
`sorted_rows` only checks the order (one comparison pass) and merges the few rows of newer files into
it by binary search; a full sort is left for the rare case where they share sample ids.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.errors import DistillCacheError

SORT_KEYS = [("sample_id", "ascending"), ("writer", "ascending"), ("row", "ascending")]
MERGE_BELOW = 0.05  # merge new rows into a sorted table by binary search when they are this small a share


def sorted_rows(tables: list[pa.Table]) -> pa.Table:
    """Every row of `tables` (same columns, or columns one of them lacks filled with nulls), sorted by
    (sample_id, writer, row)."""
    tables = [table for table in tables if table.num_rows] or tables[:1]
    if len(tables) == 1:
        table = tables[0]
        return table if is_sorted(table) else table.sort_by(SORT_KEYS)
    largest = max(range(len(tables)), key=lambda index: tables[index].num_rows)
    base = tables[largest]
    rest = pa.concat_tables(
        [table for index, table in enumerate(tables) if index != largest], promote_options="permissive"
    )
    if rest.num_rows <= MERGE_BELOW * base.num_rows and is_sorted(base):
        merged = merge_sorted(base, rest.sort_by(SORT_KEYS))
        if merged is not None:
            return merged
    return pa.concat_tables([base, rest], promote_options="permissive").sort_by(SORT_KEYS)


def is_sorted(table: pa.Table) -> bool:
    """Whether `table` is sorted by (sample_id, writer, row) (one pass; ties checked one by one)."""
    if table.num_rows < 2:
        return True
    ids = table.column("sample_id")
    if not pc.all(pc.less_equal(ids[:-1], ids[1:])).as_py():
        return False
    for position in tie_positions(table):
        before = (table.column("writer")[position - 1].as_py(), table.column("row")[position - 1].as_py())
        here = (table.column("writer")[position].as_py(), table.column("row")[position].as_py())
        if before > here:
            return False
    return True


def tie_positions(table: pa.Table) -> np.ndarray:
    """Positions p of a sorted table whose sample_id equals that of p - 1."""
    if table.num_rows < 2:
        return np.empty(0, dtype=np.int64)
    ids = table.column("sample_id")
    same = pc.equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return np.flatnonzero(same) + 1


def merge_sorted(base: pa.Table, rest: pa.Table) -> pa.Table | None:
    """Two sorted tables as one sorted table, by binary search of `rest`'s ids in `base`'s; None when
    they share a sample id (then the caller sorts, so that ties keep their (writer, row) order)."""
    base_ids = base.column("sample_id").to_numpy(zero_copy_only=False)
    rest_ids = rest.column("sample_id").to_numpy(zero_copy_only=False)
    places = np.searchsorted(base_ids, rest_ids, side="left")
    inside = places < len(base_ids)
    if np.any(base_ids[places[inside]] == rest_ids[inside]):
        return None
    # rest row i lands before base row places[i]: its final position is places[i] + i
    rest_positions = places + np.arange(len(rest_ids))
    order = np.empty(len(base_ids) + len(rest_ids), dtype=np.int64)
    is_rest = np.zeros(len(order), dtype=bool)
    is_rest[rest_positions] = True
    order[rest_positions] = len(base_ids) + np.arange(len(rest_ids))
    order[~is_rest] = np.arange(len(base_ids))
    return pa.concat_tables([base, rest], promote_options="permissive").take(pa.array(order))


def without_repeats(table: pa.Table, checksum_columns: list[str]) -> pa.Table:
    """A sorted table with each physical row (sample_id, writer, row) once. A row repeated with other
    checksums is damage: two files disagree about what one place in the arrays holds."""
    ties = tie_positions(table)
    if not len(ties):
        return table
    writers, rows = table.column("writer"), table.column("row")
    repeated = [
        position
        for position in ties.tolist()
        if writers[position] == writers[position - 1] and rows[position] == rows[position - 1]
    ]
    if not repeated:
        return table
    for position in repeated:
        for column in checksum_columns:
            if table.column(column)[position] != table.column(column)[position - 1]:
                raise DistillCacheError(
                    f"two manifest files give row {rows[position].as_py()} of writer {writers[position].as_py()} "
                    f"different {column}; the store is damaged: restore its manifest/ from a good copy"
                )
    keep = np.ones(table.num_rows, dtype=bool)
    keep[repeated] = False
    return table.filter(pa.array(keep))


def split_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(the first row of each sample, the other rows of samples committed more than once)."""
    first = np.ones(table.num_rows, dtype=bool)
    first[tie_positions(table)] = False
    if first.all():
        return table, table.slice(0, 0)
    return table.filter(pa.array(first)), table.filter(pa.array(~first))
