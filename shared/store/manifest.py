"""The manifest: one Parquet file per commit in STORE/manifest/, the only record of committed rows.

Columns: the caller's row metadata (at least REQUIRED_COLUMNS; extra scalar columns allowed), then
what the writer adds: `split`, `writer` (its group), `row` (index in the group) and one
`checksum_<field>` per field. A file is published whole under its final name (`<writer>-<first
row>.parquet`) only after the arrays it points to are written; readers see nothing else.
"""

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import DistillCacheError
from shared.store.checksum import checksum_column
from shared.store.ids import split_for
from shared.store.paths import StoreLocation
from shared.store.schema import check_name

MANIFEST = "manifest"
REQUIRED_COLUMNS = {
    "sample_id": pa.string(),
    "prompt": pa.string(),
    "negative_prompt": pa.string(),
    "seed": pa.int64(),
    "guidance_scale": pa.float64(),
    "num_inference_steps": pa.int64(),
}
ADDED_COLUMNS = ("split", "writer", "row")
SCALARS = (str, int, float, bool, np.generic, type(None))


def check_rows(rows: list[dict]) -> None:
    """Row metadata as `StoreWriter.commit` takes it: required keys, scalars, unique sample ids."""
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise DistillCacheError("commit needs a non-empty list of row dicts")
    keys = set(rows[0])
    for row in rows:
        missing = sorted(set(REQUIRED_COLUMNS) - set(row))
        reserved = sorted(key for key in row if key in ADDED_COLUMNS or key.startswith("checksum_"))
        if missing or reserved or set(row) != keys:
            raise DistillCacheError(
                f"commit rows must all have the keys {sorted(REQUIRED_COLUMNS)} (missing {missing}), "
                f"the same extra keys, and none of the writer's own {list(ADDED_COLUMNS)} / checksum_* "
                f"(given {reserved})"
            )
        odd = sorted(key for key, value in row.items() if not isinstance(value, SCALARS))
        if odd:
            raise DistillCacheError(f"manifest values must be scalars (str, int, float, bool); {odd} are not")
    text = ("sample_id", "prompt")
    if not all(isinstance(row[key], str) and row[key] for row in rows for key in text):
        raise DistillCacheError("sample_id and prompt must be non-empty strings in every commit row")
    ids = [row["sample_id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise DistillCacheError("a commit holds the same sample_id twice; give each row its own sample_id")


def commit_table(
    rows: list[dict], writer: str, first_row: int, checksums: dict[str, list[int]], val_fraction: float
) -> pa.Table:
    """The manifest file of one commit; row values of the wrong type are refused here, before any write."""
    try:
        return _commit_table(rows, writer, first_row, checksums, val_fraction)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
        raise DistillCacheError(
            f"commit rows have values of the wrong type ({error}); sample_id, prompt and negative_prompt are "
            "strings, seed and num_inference_steps integers, guidance_scale a number"
        ) from None


def _commit_table(
    rows: list[dict], writer: str, first_row: int, checksums: dict[str, list[int]], val_fraction: float
) -> pa.Table:
    columns = {
        name: pa.array([row[name] for row in rows], type=kind) for name, kind in REQUIRED_COLUMNS.items()
    }
    for name in rows[0]:
        if name not in columns:
            columns[name] = pa.array([row[name] for row in rows])
    columns["split"] = pa.array([split_for(row["sample_id"], val_fraction) for row in rows], pa.string())
    columns["writer"] = pa.array([writer] * len(rows), pa.string())
    columns["row"] = pa.array(range(first_row, first_row + len(rows)), pa.int64())
    for field, values in checksums.items():
        columns[checksum_column(field)] = pa.array(values, pa.int64())
    return pa.table(columns)


def manifest_file(writer: str, first_row: int) -> str:
    return f"{MANIFEST}/{writer}-{first_row:012d}.parquet"


def publish(location: StoreLocation, table: pa.Table, relative: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    location.write_atomic(relative, buffer.getvalue())


def read_manifest(location: StoreLocation, fields: list[str]) -> pa.Table:
    """Every committed row, sorted by sample_id; a sample committed twice (two writers racing) is kept once."""
    needed = [*REQUIRED_COLUMNS, *ADDED_COLUMNS, *(checksum_column(field) for field in fields)]
    tables = []
    for name in location.list_names(MANIFEST, ".parquet"):
        where = f"{location.url}/{MANIFEST}/{name}"
        try:
            table = pq.read_table(pa.BufferReader(location.read_bytes(f"{MANIFEST}/{name}")))
        except (pa.ArrowException, OSError) as error:
            raise DistillCacheError(
                f"{where} is not a readable Parquet file ({error}); the store is damaged"
            ) from None
        missing = [column for column in needed if column not in table.column_names]
        if missing:
            raise DistillCacheError(f"{where} lacks the columns {missing}; the store is damaged")
        for writer in pc.unique(table.column("writer")).to_pylist():
            check_name(writer, f"{where}: writer")
        if table.num_rows and pc.min(table.column("row")).as_py() < 0:
            raise DistillCacheError(f"{where} has a negative row number; the store is damaged")
        tables.append(table)
    if not tables:
        empty = {**REQUIRED_COLUMNS, "split": pa.string(), "writer": pa.string(), "row": pa.int64()}
        empty.update({checksum_column(field): pa.int64() for field in fields})
        return pa.table({name: pa.array([], kind) for name, kind in empty.items()})
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.sort_by([("sample_id", "ascending"), ("writer", "ascending"), ("row", "ascending")])
    sample_ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(sample_ids), dtype=bool)
    first[1:] = sample_ids[1:] != sample_ids[:-1]
    return table.filter(pa.array(first))
