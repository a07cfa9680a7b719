"""The manifest: one Parquet file per commit in STORE/manifest/, the only record of committed rows.

Columns: the caller's row metadata (at least REQUIRED_COLUMNS; extra scalar columns allowed), then
what the writer adds: `split`, `writer` (its group), `row` (index in the group) and one
`checksum_<field>` per field. A file is published whole under its final name only after the arrays
it points to are written; readers see nothing else.

Every file protects itself: its name ends in the CRC-32C of its bytes (`<writer>-<first row>-<crc>.parquet`),
checked before it is parsed, so a flipped byte anywhere in it (pages, footer, schema, metadata) is one
clear line naming the file, never a changed sample_id, seed or split; its pages also carry Parquet's
own checksums. Its key-value metadata records a digest of each of the writer's array descriptions
(zarr.json without the row count), which the reader checks before it opens an array. `manifest/.present`,
written before store.json, tells a store whose manifest folder was lost from one that has no commit yet.

This module is the one place that reads manifests (`ManifestFiles`): readers list and read every
file once; writers keep one instance and, before each batch, read only the files added since their
last look (`refresh`), to skip jobs that other writers committed meanwhile.
"""

import io
import json
import re
from dataclasses import dataclass

import crc32c
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
MANIFEST_MARKER = f"{MANIFEST}/.present"
ARRAYS_KEY = b"distillcache.arrays"
MANIFEST_NAME = re.compile(r"(?P<stem>[A-Za-z0-9_][A-Za-z0-9_.\-]*)-(?P<crc>[0-9a-f]{8})\.parquet")
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


def manifest_stem(writer: str, first_row: int) -> str:
    """The start of a commit's manifest file name (publish adds the CRC-32C and the suffix)."""
    return f"{MANIFEST}/{writer}-{first_row:012d}"


def publish(location: StoreLocation, table: pa.Table, stem: str, array_digests: dict[str, str]) -> str:
    """Write one commit's manifest file whole, named `<stem>-<CRC-32C of its bytes>.parquet`, with the
    digests of the writer's array descriptions in its metadata; returns its path in the store."""
    table = table.replace_schema_metadata({ARRAYS_KEY: json.dumps(array_digests, sort_keys=True).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, write_page_checksum=True)
    data = buffer.getvalue()
    relative = f"{stem}-{crc32c.crc32c(data):08x}.parquet"
    location.write_atomic(relative, data)
    return relative


def read_manifest_file(location: StoreLocation, name: str, needed: list[str]) -> tuple[pa.Table, dict]:
    """One manifest file, checked (its bytes against the CRC-32C in its name, page checksums, the columns
    needed, the names it holds): (its rows, {field: digest of the writer's zarr.json}) ."""
    where = f"{location.url}/{MANIFEST}/{name}"
    damaged = f"; the store is damaged: restore {MANIFEST}/{name} from a good copy of the store"
    named = MANIFEST_NAME.fullmatch(name)
    if named is None:
        raise DistillCacheError(f"{where} is not named <writer>-<row>-<CRC-32C>.parquet{damaged}")
    data = location.read_bytes(f"{MANIFEST}/{name}")
    if f"{crc32c.crc32c(data):08x}" != named["crc"]:
        raise DistillCacheError(f"{where} does not match the checksum in its name{damaged}")
    try:
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        array_digests = json.loads((table.schema.metadata or {})[ARRAYS_KEY])
    except KeyError:
        raise DistillCacheError(f"{where} records no array digests{damaged}") from None
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as error:
        raise DistillCacheError(f"{where} is not a readable Parquet file ({error}){damaged}") from None
    missing = [column for column in needed if column not in table.column_names]
    if missing:
        raise DistillCacheError(f"{where} lacks the columns {missing}{damaged}")
    for writer in pc.unique(table.column("writer")).to_pylist():
        check_name(writer, f"{where}: writer")
    if table.num_rows and pc.min(table.column("row")).as_py() < 0:
        raise DistillCacheError(f"{where} has a negative row number{damaged}")
    if not isinstance(array_digests, dict):
        raise DistillCacheError(f"{where} records no array digests{damaged}")
    return table.replace_schema_metadata(None), array_digests


@dataclass(frozen=True)
class Manifest:
    """Committed rows: `table` (each sample once, sorted by sample_id), `duplicates` (the rows of
    samples committed again by racing writers, which readers skip) and the array digests."""

    table: pa.Table
    duplicates: pa.Table
    array_digests: dict[str, dict[str, str]]  # writer -> {field: digest of its zarr.json sans row count}


class ManifestFiles:
    """The manifest files of a store, read once each; `refresh()` reads only files new since the last call."""

    def __init__(self, location: StoreLocation, fields: list[str]):
        self.location = location
        self.fields = list(fields)
        self.needed = [*REQUIRED_COLUMNS, *ADDED_COLUMNS, *(checksum_column(field) for field in fields)]
        self._tables: dict[str, pa.Table] = {}
        self._sample_ids: set[str] = set()
        self._array_digests: dict[str, dict[str, str]] = {}  # writer -> {field: digest}

    def refresh(self) -> list[pa.Table]:
        """Read the files published since the last look; returns their tables."""
        if not self.location.exists(MANIFEST_MARKER):
            raise DistillCacheError(
                f"{self.location.url}/{MANIFEST}/ is missing: the record of the store's committed rows is gone; "
                "restore it from a good copy of the store"
            )
        new = [name for name in self.location.list_names(MANIFEST, ".parquet") if name not in self._tables]
        tables = []
        for name in new:
            table, array_digests = read_manifest_file(self.location, name, self.needed)
            for writer in pc.unique(table.column("writer")).to_pylist():
                known = self._array_digests.setdefault(writer, {})
                for field, digest in array_digests.items():
                    if known.setdefault(field, digest) != digest:
                        raise DistillCacheError(
                            f"{self.location.url}/{MANIFEST}/{name} records another description of array "
                            f"{field!r} of writer {writer!r} than its other manifest files; the store is damaged"
                        )
            tables.append(table)
        self._tables.update(zip(new, tables))
        for table in tables:
            self._sample_ids.update(table.column("sample_id").to_pylist())
        return tables

    def array_digests(self, writer: str) -> dict[str, str]:
        """{field: digest of its zarr.json without the row count} as the writer's manifests record it."""
        return dict(self._array_digests.get(writer, {}))

    def sample_ids(self) -> set[str]:
        """Every sample_id read so far (a copy)."""
        return set(self._sample_ids)

    def manifest(self) -> Manifest:
        """Every row read so far, sorted by sample_id; a sample committed twice (writers racing) is kept once."""
        if not self._tables:
            empty = {**REQUIRED_COLUMNS, "split": pa.string(), "writer": pa.string(), "row": pa.int64()}
            empty.update({checksum_column(field): pa.int64() for field in self.fields})
            table = pa.table({name: pa.array([], kind) for name, kind in empty.items()})
            return Manifest(table, table, {})
        table = pa.concat_tables(self._tables.values(), promote_options="permissive")
        table = table.sort_by([("sample_id", "ascending"), ("writer", "ascending"), ("row", "ascending")])
        sample_ids = table.column("sample_id").to_numpy(zero_copy_only=False)
        first = np.ones(len(sample_ids), dtype=bool)
        first[1:] = sample_ids[1:] != sample_ids[:-1]
        digests = {writer: dict(fields) for writer, fields in self._array_digests.items()}
        return Manifest(table.filter(pa.array(first)), table.filter(pa.array(~first)), digests)


def read_manifest(location: StoreLocation, fields: list[str]) -> Manifest:
    """Every committed row of the store (see ManifestFiles.manifest)."""
    files = ManifestFiles(location, fields)
    files.refresh()
    return files.manifest()


def mark_manifest_folder(location: StoreLocation) -> None:
    """Create manifest/.present (with store.json): from then on a missing manifest folder is damage."""
    if not location.exists(MANIFEST_MARKER):
        location.write_atomic(MANIFEST_MARKER, b"")
