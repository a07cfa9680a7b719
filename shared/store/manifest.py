"""The manifest: Parquet files in STORE/manifest/, the only record of committed rows.

Columns: the caller's row metadata (at least REQUIRED_COLUMNS; extra scalar columns allowed), then
what the writer adds: `split`, `writer` (its group), `row` (index in the group) and one
`checksum_<field>` per field. A commit's file is published whole under its final name only after the
arrays it points to are written; readers see nothing else.

Every file protects itself: its name ends in the CRC-32C of its bytes (`<writer>-<first row>-<crc>.parquet`),
checked before it is parsed, so a flipped byte anywhere in it (pages, footer, schema, metadata) is one
clear line naming the file, never a changed sample_id, seed or split; its pages also carry Parquet's
own checksums. Its key-value metadata records a digest of each of the writer's array descriptions
(zarr.json without the row count), which the reader checks before it opens an array. `manifest/.present`,
written before store.json, tells a store whose manifest folder was lost from one that has no commit yet.

Compaction (shared/store/compaction.py) folds many files into one `manifest/compacted/c<time>-<id>-<crc>.parquet`:
the same checks, rows of many writers sorted by (sample_id, writer, row), each writer's array digests,
and the names of the files it replaces. `ManifestFiles` reads a store before, during and after a
compaction with every committed row exactly once (its docstring and docs/store.md say how).

This module is the one place that reads and writes manifests (`ManifestFiles`, `publish`,
`publish_compacted`): readers list and read every live file once; writers keep one instance and,
before each batch, read only the files added since their last look (`refresh`), to skip jobs that
other writers committed meanwhile.
"""

import io
import json
import re
import time
import uuid
from dataclasses import dataclass

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.errors import DistillCacheError
from shared.store.checksum import checksum_column
from shared.store.committed_ids import CommittedIds
from shared.store.ids import split_for
from shared.store.manifest_rows import sorted_rows, split_duplicates, without_repeats
from shared.store.paths import StoreLocation
from shared.store.schema import check_name

MANIFEST = "manifest"
MANIFEST_MARKER = f"{MANIFEST}/.present"
COMPACTED = f"{MANIFEST}/compacted"
COMPACTED_PREFIX = "compacted/"  # how a compacted file is named relative to manifest/
ARRAYS_KEY = b"distillcache.arrays"  # a commit's file: {field: digest of the writer's zarr.json}
WRITER_ARRAYS_KEY = b"distillcache.writer_arrays"  # a compacted file: {writer: {field: digest}}
REPLACES_KEY = b"distillcache.replaces"  # a compacted file: names of the files it replaces
RELIST_ATTEMPTS = 5
PREFETCH_FILES = 256  # commit files whose bytes are read at once (concurrently on an object store)
LOW_CARDINALITY = ["prompt", "negative_prompt", "split", "writer"]  # read through a dictionary
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
KEY_COLUMNS = ("sample_id", "writer", "row")  # what resume and gc read (ManifestFiles(all_columns=False))
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


def compacted_stem() -> str:
    """The start of a new compacted file's name: the UTC time (names sort oldest first) and a random part."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
    return f"{COMPACTED}/c{stamp}-{uuid.uuid4().hex[:8]}"


def publish(location: StoreLocation, table: pa.Table, stem: str, array_digests: dict[str, str]) -> str:
    """Write one commit's manifest file whole, named `<stem>-<CRC-32C of its bytes>.parquet`, with the
    digests of the writer's array descriptions in its metadata; returns its path in the store."""
    metadata = {ARRAYS_KEY: json.dumps(array_digests, sort_keys=True).encode()}
    return _publish(location, table, stem, metadata)


def publish_compacted(
    location: StoreLocation, table: pa.Table, writer_digests: dict[str, dict[str, str]], replaces: list[str]
) -> str:
    """Write a compacted manifest file: `table` (rows of many writers, sorted by sample_id, writer, row),
    each writer's array digests, and the names of the manifest files it replaces; returns its path."""
    metadata = {
        WRITER_ARRAYS_KEY: json.dumps(writer_digests, sort_keys=True).encode(),
        REPLACES_KEY: json.dumps(sorted(replaces)).encode(),
    }
    return _publish(location, table, compacted_stem(), metadata)


def _publish(location: StoreLocation, table: pa.Table, stem: str, metadata: dict[bytes, bytes]) -> str:
    table = table.replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, write_page_checksum=True, compression="zstd")
    data = buffer.getvalue()
    relative = f"{stem}-{crc32c.crc32c(data):08x}.parquet"
    location.write_atomic(relative, data)
    return relative


class VanishedFile(Exception):
    """A listed manifest file was gone when it was read: a compaction replaced and removed it."""


@dataclass(frozen=True)
class ManifestFile:
    """One manifest file, checked: its rows, {writer: {field: zarr.json digest}}, and the names of the
    files it replaces (compacted files only)."""

    table: pa.Table
    writer_digests: dict[str, dict[str, str]]
    replaces: frozenset[str]


NOT_READ = object()  # read_manifest_file's `data` when the caller has not read the file's bytes


def read_manifest_file(
    location: StoreLocation, name: str, needed: list[str], all_columns: bool = True, data=NOT_READ
) -> ManifestFile:
    """One manifest file (`name` relative to manifest/), checked: its bytes against the CRC-32C in its
    name, page checksums, the columns needed, the names it holds; all its columns, or only sample_id,
    writer, row and the checksums. Raises VanishedFile if it is gone. `data`: its bytes (None: gone)
    when the caller read them already."""
    where = f"{location.url}/{MANIFEST}/{name}"
    damaged = f"; the store is damaged: restore {MANIFEST}/{name} from a good copy of the store"
    if not is_manifest_name(name):
        raise DistillCacheError(f"{where} is not named <writer>-<row>-<CRC-32C>.parquet{damaged}")
    if data is NOT_READ:
        data = location.read_bytes_if_exists(f"{MANIFEST}/{name}")
    if data is None:
        raise VanishedFile(name)
    if f"{crc32c.crc32c(data):08x}" != MANIFEST_NAME.fullmatch(name.rsplit("/", 1)[-1])["crc"]:
        raise DistillCacheError(f"{where} does not match the checksum in its name{damaged}")
    try:
        parquet = pq.ParquetFile(
            pa.BufferReader(data), page_checksum_verification=True, read_dictionary=LOW_CARDINALITY
        )
        schema = parquet.schema_arrow
        missing = [column for column in needed if column not in schema.names]
        kept = (
            None
            if all_columns
            else [*KEY_COLUMNS, *(name for name in needed if name.startswith("checksum_"))]
        )
        table = None if missing else plain_strings(parquet.read(columns=kept))
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as error:
        raise DistillCacheError(f"{where} is not a readable Parquet file ({error}){damaged}") from None
    if missing:
        raise DistillCacheError(f"{where} lacks the columns {missing}{damaged}")
    metadata = schema.metadata or {}
    try:
        if name.startswith(COMPACTED_PREFIX):
            writer_digests = json.loads(metadata[WRITER_ARRAYS_KEY])
            replaces = json.loads(metadata[REPLACES_KEY])
        else:
            writer_digests, replaces = json.loads(metadata[ARRAYS_KEY]), []
    except (KeyError, ValueError, UnicodeDecodeError):
        raise DistillCacheError(f"{where} records no array digests{damaged}") from None
    writers = pc.unique(table.column("writer")).to_pylist()
    for writer in writers:
        check_name(writer, f"{where}: writer")
    if table.num_rows and pc.min(table.column("row")).as_py() < 0:
        raise DistillCacheError(f"{where} has a negative row number{damaged}")
    if not name.startswith(COMPACTED_PREFIX) and isinstance(writer_digests, dict) and len(writers) == 1:
        writer_digests = {writers[0]: writer_digests}  # a commit's file: one writer, its fields' digests
    if not (
        isinstance(writer_digests, dict)
        and all(isinstance(writer_digests.get(writer), dict) for writer in writers)
        and isinstance(replaces, list)
        and all(isinstance(item, str) and is_manifest_name(item) for item in replaces)
    ):
        raise DistillCacheError(f"{where} records no array digests for its writers{damaged}")
    return ManifestFile(table.replace_schema_metadata(None), writer_digests, frozenset(replaces))


def plain_strings(table: pa.Table) -> pa.Table:
    """The low-cardinality columns read as dictionaries (about twice as fast at 10^6 rows) as plain strings."""
    for index, column in enumerate(table.schema):
        if pa.types.is_dictionary(column.type) and column.name in LOW_CARDINALITY:
            table = table.set_column(index, column.name, pc.cast(table.column(index), column.type.value_type))
    return table


def is_manifest_name(name: str) -> bool:
    """`<writer>-<row>-<crc>.parquet` (a commit's file) or `compacted/<stem>-<crc>.parquet`."""
    base = name[len(COMPACTED_PREFIX) :] if name.startswith(COMPACTED_PREFIX) else name
    return MANIFEST_NAME.fullmatch(base) is not None


def refuse_older_names(location: StoreLocation, names: list[str]) -> None:
    """Refuse, in one line, commit files named as an older development version of distillcache named
    them (`<writer>-<row>.parquet`, without the CRC-32C that this version checks before parsing)."""
    older = [name for name in names if not is_manifest_name(name)]
    if older:
        raise DistillCacheError(
            f"{location.url}/{MANIFEST}/ holds {len(older)} file{'s' * (len(older) != 1)} not named "
            f"<writer>-<row>-<CRC-32C>.parquet (e.g. {min(older)}): the store was written by an older "
            "distillcache development version, whose manifests this version cannot check; capture it again "
            "into a new folder (teacher-cache run --out NEW with the same prompts), or read it with the "
            "version that wrote it"
        )


@dataclass(frozen=True)
class Manifest:
    """Committed rows: `table` (each sample once, sorted by sample_id), `duplicates` (the rows of
    samples committed again by racing writers, which readers skip) and the array digests."""

    table: pa.Table
    duplicates: pa.Table
    array_digests: dict[str, dict[str, str]]  # writer -> {field: digest of its zarr.json sans row count}


class ManifestFiles:
    """The manifest files of a store, read once each; `refresh()` reads only files new since the last call.

    Compaction-aware (docs/store.md, "Compaction"): commit files are listed first, then compacted
    files; compacted files are read newest first, and a file that one of them replaces is not read
    (its rows are in the compacted file). A listed file that is gone when read was removed by a
    compaction after being replaced: the folders are listed again (the replacement is there by then).
    A row that two files list (a compacted file and one it replaces, read before the replacement was
    seen, or two compactions made at once) is kept once."""

    def __init__(self, location: StoreLocation, fields: list[str], all_columns: bool = True):
        """`fields`: whose checksum columns each file must have; `all_columns`: keep every column (a
        reader's manifest) or only sample_id, writer, row and the checksums (what resume and gc need:
        faster at 10^6 rows)."""
        self.location = location
        self.fields = list(fields)
        self.needed = [*REQUIRED_COLUMNS, *ADDED_COLUMNS, *(checksum_column(field) for field in fields)]
        self.all_columns = all_columns
        self._tables: dict[str, pa.Table] = {}  # live files (not replaced by a file read): name -> rows
        self._replaced_by: dict[str, str] = {}  # name -> a compacted file read that replaces it
        self._listed: list[str] = []  # the names of the last listing (commit files, then compacted)
        self._sample_ids = CommittedIds()
        self._ids_pending: list[pa.Table] = []  # tables read whose ids are not in _sample_ids yet
        self._array_digests: dict[str, dict[str, str]] = {}  # writer -> {field: digest}

    def refresh(self) -> list[pa.Table]:
        """Read the files published since the last look; returns their tables."""
        if not self.location.exists(MANIFEST_MARKER):
            refuse_older_names(self.location, self.location.list_names(MANIFEST, ".parquet", fresh=True))
            raise DistillCacheError(
                f"{self.location.url}/{MANIFEST}/ is missing: the record of the store's committed rows is gone; "
                "restore it from a good copy of the store"
            )
        tables: list[pa.Table] = []
        for _ in range(RELIST_ATTEMPTS):
            self._listed = self._list()
            try:
                self._read_new(tables)
                return tables
            except VanishedFile:
                continue  # replaced and removed by a compaction since the listing: list again
        raise DistillCacheError(
            f"{self.location.url}/{MANIFEST}/: files vanished between listing and reading {RELIST_ATTEMPTS} "
            "times; something other than `teacher-cache compact` is removing manifest files"
        )

    def _list(self) -> list[str]:
        """Commit files first, then compacted files: a commit file removed during the first listing was
        replaced by a compacted file published before, which the second listing sees."""
        leaves = self.location.list_names(MANIFEST, ".parquet", fresh=True)
        compacted = self.location.list_names(COMPACTED, ".parquet", fresh=True)
        return [*leaves, *(COMPACTED_PREFIX + name for name in compacted)]

    def _read_new(self, tables: list[pa.Table]) -> None:
        compacted = sorted((name for name in self._listed if name.startswith(COMPACTED_PREFIX)), reverse=True)
        for name in compacted:  # newest compaction first: it replaces the older ones
            if name not in self._tables and name not in self._replaced_by:
                self._read_one(name, tables)
        leaves = [
            name
            for name in self._listed
            if not name.startswith(COMPACTED_PREFIX)
            and name not in self._tables
            and name not in self._replaced_by
        ]
        refuse_older_names(self.location, leaves)
        for start in range(0, len(leaves), PREFETCH_FILES):  # commit files replace nothing: read together
            some = leaves[start : start + PREFETCH_FILES]
            data = self.location.read_many_if_exist([f"{MANIFEST}/{name}" for name in some])
            for name in some:
                self._read_one(name, tables, data[f"{MANIFEST}/{name}"])

    def _read_one(self, name: str, tables: list[pa.Table], data=NOT_READ) -> None:
        read = read_manifest_file(self.location, name, self.needed, self.all_columns, data)
        self._add(name, read)
        tables.append(read.table)

    def _add(self, name: str, read: ManifestFile) -> None:
        for writer, digests in read.writer_digests.items():
            known = self._array_digests.setdefault(writer, {})
            for field, digest in digests.items():
                if known.setdefault(field, digest) != digest:
                    raise DistillCacheError(
                        f"{self.location.url}/{MANIFEST}/{name} records another description of array "
                        f"{field!r} of writer {writer!r} than its other manifest files; the store is damaged"
                    )
        if read.replaces:
            for replaced in read.replaces:
                self._replaced_by.setdefault(replaced, name)
                self._tables.pop(replaced, None)  # its rows are in this file
        self._tables[name] = read.table
        self._ids_pending.append(read.table)

    def array_digests(self, writer: str) -> dict[str, str]:
        """{field: digest of its zarr.json without the row count} as the writer's manifests record it."""
        return dict(self._array_digests.get(writer, {}))

    def writer_digests(self) -> dict[str, dict[str, str]]:
        """{writer: {field: digest}} for every writer read so far."""
        return {writer: dict(fields) for writer, fields in self._array_digests.items()}

    def sample_ids(self) -> CommittedIds:
        """Every sample_id read so far: the set this instance keeps up to date (shared.store.committed_ids;
        only a writer adds its own commits to it). Built on first use (a reader does not need it)."""
        self._sample_ids.add_tables(self._ids_pending)
        self._ids_pending = []
        return self._sample_ids

    def live_names(self) -> list[str]:
        """The files whose rows make up the manifest: every file read that no file read replaces."""
        return sorted(self._tables)

    def replaced_names(self) -> dict[str, str]:
        """{listed file: a compacted file read that replaces it}: files that may be removed once their
        replacement is older than every reader's listing (see compaction.py)."""
        return {name: self._replaced_by[name] for name in self._listed if name in self._replaced_by}

    def all_rows(self) -> pa.Table:
        """Every committed row once (racing writers' duplicates included), sorted by sample_id, writer, row."""
        if not self._tables:
            empty = {**REQUIRED_COLUMNS, "split": pa.string(), "writer": pa.string(), "row": pa.int64()}
            empty.update({checksum_column(field): pa.int64() for field in self.fields})
            return pa.table({name: pa.array([], kind) for name, kind in empty.items()})
        table = sorted_rows(list(self._tables.values()))
        checksums = [column for column in table.column_names if column.startswith("checksum_")]
        return without_repeats(table, checksums)

    def manifest(self) -> Manifest:
        """Every row read so far, sorted by sample_id; a sample committed twice (writers racing) is kept once."""
        first, duplicates = split_duplicates(self.all_rows())
        return Manifest(first, duplicates, self.writer_digests())


def read_manifest(location: StoreLocation, fields: list[str]) -> Manifest:
    """Every committed row of the store (see ManifestFiles.manifest)."""
    files = ManifestFiles(location, fields)
    files.refresh()
    return files.manifest()


def mark_manifest_folder(location: StoreLocation) -> None:
    """Create manifest/.present (with store.json): from then on a missing manifest folder is damage."""
    if not location.exists(MANIFEST_MARKER):
        location.write_atomic(MANIFEST_MARKER, b"")
