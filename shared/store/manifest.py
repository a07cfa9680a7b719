"""The manifest: one Parquet file per commit in STORE/manifest/, the only record of committed rows.

Columns: the caller's row metadata (at least REQUIRED_COLUMNS; extra scalar columns allowed), then
what the writer adds: `split`, `writer` (its group), `row` (index in the group) and one
`checksum_<field>` per field. A file is published whole under its final name (`<writer>-<first
row>.parquet`) only after the arrays it points to are written; readers see nothing else.

Every file protects itself twice: Parquet page checksums (written and verified by pyarrow) and one
CRC-32C per column over its values, kept in the file's key-value metadata under
`distillcache.columns` and checked for every column read, so a flipped byte anywhere in the file
(pages, footer, schema, the digests themselves) is one clear line, never a changed sample_id, seed
or split. `manifest/.present`, written with store.json, tells a store whose manifest folder was
lost from one that has no commit yet.

This module is the one place that reads manifests (`ManifestFiles`): readers list and read every
file once; writers keep one instance and, before each batch, read only the files added since their
last look (`refresh`), to skip jobs that other writers committed meanwhile.
"""

import io
import json
from dataclasses import dataclass

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import DistillCacheError
from shared.store.checksum import checksum_column
from shared.store.fingerprint import canonical_json
from shared.store.ids import split_for
from shared.store.paths import StoreLocation
from shared.store.schema import check_name

MANIFEST = "manifest"
MANIFEST_MARKER = f"{MANIFEST}/.present"
DIGESTS_KEY = b"distillcache.columns"
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
BYTE_COLUMN_TYPES = {
    pa.string(): "<i4",
    pa.binary(): "<i4",
    pa.large_string(): "<i8",
    pa.large_binary(): "<i8",
}


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


def column_checksum(column: pa.Array | pa.ChunkedArray) -> str:
    """CRC-32C of a column's type, length, nulls and values (8 hex digits), however it is chunked."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    crc = crc32c.crc32c(f"{array.type}|{len(array)}|{array.null_count}".encode())
    if array.null_count:
        crc = crc32c.crc32c(pc.is_null(array).to_numpy(zero_copy_only=False).tobytes(), crc)
    if array.type in BYTE_COLUMN_TYPES:  # the values' bytes and lengths, straight from Arrow's buffers
        _, offsets_buffer, data_buffer = array.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=BYTE_COLUMN_TYPES[array.type])
        offsets = offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
        crc = crc32c.crc32c((offsets - offsets[0]).tobytes(), crc)
        if data_buffer is not None:
            crc = crc32c.crc32c(memoryview(data_buffer)[offsets[0] : offsets[-1]], crc)
    elif (
        pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)
    ):
        values = (
            array.fill_null(False if pa.types.is_boolean(array.type) else 0) if array.null_count else array
        )
        crc = crc32c.crc32c(np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).tobytes(), crc)
    else:  # any other type an extra column may have
        crc = crc32c.crc32c(canonical_json(array.to_pylist()).encode(), crc)
    return f"{crc:08x}"


def publish(location: StoreLocation, table: pa.Table, relative: str) -> None:
    """Write one commit's manifest file whole, with page checksums and its column checksums."""
    digests = {name: column_checksum(table.column(name)) for name in table.column_names}
    table = table.replace_schema_metadata({DIGESTS_KEY: json.dumps(digests).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, write_page_checksum=True)
    location.write_atomic(relative, buffer.getvalue())


def read_manifest_file(location: StoreLocation, name: str, needed: list[str]) -> pa.Table:
    """One manifest file, checked: page checksums, the column checksums, the columns needed, names."""
    where = f"{location.url}/{MANIFEST}/{name}"
    damaged = f"; the store is damaged: restore {MANIFEST}/{name} from a good copy of the store"
    try:
        table = pq.read_table(
            pa.BufferReader(location.read_bytes(f"{MANIFEST}/{name}")), page_checksum_verification=True
        )
        digests = json.loads((table.schema.metadata or {})[DIGESTS_KEY])
    except KeyError:
        raise DistillCacheError(f"{where} carries no column checksums{damaged}") from None
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as error:
        raise DistillCacheError(f"{where} is not a readable Parquet file ({error}){damaged}") from None
    if not isinstance(digests, dict) or sorted(digests) != sorted(table.column_names):
        raise DistillCacheError(f"{where}: its columns do not match its column checksums{damaged}")
    for column in table.column_names:
        if column_checksum(table.column(column)) != digests[column]:
            raise DistillCacheError(f"{where}: column {column!r} does not match its checksum{damaged}")
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise DistillCacheError(f"{where} lacks the columns {missing}{damaged}")
    for writer in pc.unique(table.column("writer")).to_pylist():
        check_name(writer, f"{where}: writer")
    if table.num_rows and pc.min(table.column("row")).as_py() < 0:
        raise DistillCacheError(f"{where} has a negative row number{damaged}")
    return table.replace_schema_metadata(None)


@dataclass(frozen=True)
class Manifest:
    """Committed rows: `table` (each sample once, sorted by sample_id) and `duplicates` (the rows of
    samples committed again by racing writers, which readers skip)."""

    table: pa.Table
    duplicates: pa.Table


class ManifestFiles:
    """The manifest files of a store, read once each; `refresh()` reads only files new since the last call."""

    def __init__(self, location: StoreLocation, fields: list[str]):
        self.location = location
        self.fields = list(fields)
        self.needed = [*REQUIRED_COLUMNS, *ADDED_COLUMNS, *(checksum_column(field) for field in fields)]
        self._tables: dict[str, pa.Table] = {}
        self._sample_ids: set[str] = set()

    def refresh(self) -> list[pa.Table]:
        """Read the files published since the last look; returns their tables."""
        if not self.location.exists(MANIFEST_MARKER):
            raise DistillCacheError(
                f"{self.location.url}/{MANIFEST}/ is missing: the record of the store's committed rows is gone; "
                "restore it from a good copy of the store"
            )
        new = [name for name in self.location.list_names(MANIFEST, ".parquet") if name not in self._tables]
        tables = [read_manifest_file(self.location, name, self.needed) for name in new]
        self._tables.update(zip(new, tables))
        for table in tables:
            self._sample_ids.update(table.column("sample_id").to_pylist())
        return tables

    def sample_ids(self) -> set[str]:
        """Every sample_id read so far (a copy)."""
        return set(self._sample_ids)

    def manifest(self) -> Manifest:
        """Every row read so far, sorted by sample_id; a sample committed twice (writers racing) is kept once."""
        if not self._tables:
            empty = {**REQUIRED_COLUMNS, "split": pa.string(), "writer": pa.string(), "row": pa.int64()}
            empty.update({checksum_column(field): pa.int64() for field in self.fields})
            table = pa.table({name: pa.array([], kind) for name, kind in empty.items()})
            return Manifest(table, table)
        table = pa.concat_tables(self._tables.values(), promote_options="permissive")
        table = table.sort_by([("sample_id", "ascending"), ("writer", "ascending"), ("row", "ascending")])
        sample_ids = table.column("sample_id").to_numpy(zero_copy_only=False)
        first = np.ones(len(sample_ids), dtype=bool)
        first[1:] = sample_ids[1:] != sample_ids[:-1]
        return Manifest(table.filter(pa.array(first)), table.filter(pa.array(~first)))


def read_manifest(location: StoreLocation, fields: list[str]) -> Manifest:
    """Every committed row of the store (see ManifestFiles.manifest)."""
    files = ManifestFiles(location, fields)
    files.refresh()
    return files.manifest()


def mark_manifest_folder(location: StoreLocation) -> None:
    """Create manifest/.present (with store.json): from then on a missing manifest folder is damage."""
    if not location.exists(MANIFEST_MARKER):
        location.write_atomic(MANIFEST_MARKER, b"")
