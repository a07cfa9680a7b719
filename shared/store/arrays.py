"""The Zarr v3 arrays of the store: one group per writer, `groups/<writer>/<field>`, row axis first.

Layout (DESIGN.md: chunk for the reads training does, shard for the writes):
- a sample of at least 64 KiB is its own inner chunk, whole (a trajectory's 51 steps together), and is
  split along its first axis (steps) only above 4 MiB; smaller samples share a chunk of ~256 KiB;
- a shard holds `shard_rows` rows (the first commit's batch size). Every commit starts on a fresh
  shard, so a shard is written once, by one writer, in one commit: a crash can only leave behind the
  shards of the batch in flight, and no two processes ever write the same file.

Reads go through `gather` in one event-loop round trip. Rows are read as slices of contiguous runs:
Zarr's per-call overhead (~1 ms) and its integer-array indexing, not bandwidth, are what make a
naive per-sample loader slow.

The metadata of every array is vetted before Zarr sees it (format 3, the field's dtype and shape,
known codecs only), so a store cannot make the reader run a codec such as numcodecs.pickle.
"""

import asyncio
import hashlib
import json
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.api import asynchronous as zarr_async
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from shared.errors import DistillCacheError
from shared.store.dtypes import storage_dtype
from shared.store.fingerprint import canonical_json
from shared.store.paths import StoreLocation
from shared.store.schema import FieldSpec

GROUPS = "groups"
OWN_CHUNK_BYTES = 64 * 1024  # a sample at least this big gets a chunk of its own
SHARED_CHUNK_BYTES = 256 * 1024  # smaller samples are packed to about this much per chunk
MAX_CHUNK_BYTES = 4 * 1024 * 1024  # above this a sample is split along its first axis
SAFE_CODECS = frozenset({"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose", "sharding_indexed"})
COMPRESSORS = ("zstd", "lz4", "none")


@dataclass(frozen=True)
class Compression:
    """Blosc with byte shuffle and the named compressor, or none."""

    name: str = "zstd"
    level: int = 3

    def __post_init__(self) -> None:
        if self.name not in COMPRESSORS:
            raise DistillCacheError(
                f"compressor {self.name!r} is unknown; use one of {', '.join(COMPRESSORS)}"
            )
        if not isinstance(self.level, int) or not 0 <= self.level <= 9:
            raise DistillCacheError(f"compression level {self.level!r} must be an integer from 0 to 9")

    def codecs(self, itemsize: int) -> list:
        """Blosc (unless "none"), then a CRC-32C of the encoded chunk: a flipped byte anywhere in a chunk,
        even one the decompressor would ignore, fails the read (as the shard index's own CRC-32C does)."""
        if self.name == "none":
            return [Crc32cCodec()]
        return [
            BloscCodec(cname=self.name, clevel=self.level, shuffle="shuffle", typesize=itemsize),
            Crc32cCodec(),
        ]


def array_path(writer: str, field: str) -> str:
    return f"{GROUPS}/{writer}/{field}"


def chunk_layout(spec: FieldSpec, shard_rows: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(inner chunk shape, shard shape), both with the row axis first."""
    sample_bytes = spec.sample_nbytes
    if sample_bytes > MAX_CHUNK_BYTES and spec.shape:
        step_bytes = sample_bytes // spec.shape[0]
        steps_per_chunk = max(1, MAX_CHUNK_BYTES // step_bytes)
        shard_steps = math.ceil(spec.shape[0] / steps_per_chunk) * steps_per_chunk
        return (1, steps_per_chunk, *spec.shape[1:]), (shard_rows, shard_steps, *spec.shape[1:])
    if sample_bytes >= OWN_CHUNK_BYTES:
        return (1, *spec.shape), (shard_rows, *spec.shape)
    wanted_rows = max(1, SHARED_CHUNK_BYTES // sample_bytes)
    chunk_rows = max(
        rows for rows in range(1, shard_rows + 1) if shard_rows % rows == 0 and rows <= wanted_rows
    )
    return (chunk_rows, *spec.shape), (shard_rows, *spec.shape)


def create_array(store, writer: str, field: str, spec: FieldSpec, shard_rows: int, compression: Compression):
    chunks, shards = chunk_layout(spec, shard_rows)
    dtype = storage_dtype(spec.dtype)
    return sync(
        zarr_async.create_array(
            store,
            name=array_path(writer, field),
            shape=(0, *spec.shape),
            dtype=dtype,
            chunks=chunks,
            shards=shards,
            compressors=compression.codecs(dtype.itemsize),
            fill_value=0,
            zarr_format=3,
            attributes={"dtype": spec.dtype},
        )
    )


def metadata_digest(metadata: dict) -> str:
    """sha256 of an array's zarr.json content without its row count (the one value commits change)."""
    content = json.loads(json.dumps(metadata))
    if isinstance(content.get("shape"), list) and content["shape"]:
        content["shape"][0] = None
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def read_metadata_digest(location: StoreLocation, writer: str, field: str) -> str:
    """metadata_digest of the field's zarr.json in `writer`'s group, as it is on disk now."""
    return metadata_digest(json.loads(location.read_bytes(f"{array_path(writer, field)}/zarr.json")))


def open_array(
    location: StoreLocation,
    store,
    writer: str,
    field: str,
    spec: FieldSpec,
    expected_digest: str | None = None,
):
    """The field's array in `writer`'s group, after vetting its metadata (and, with `expected_digest`,
    checking it is the description the writer's manifests record); None if it does not exist."""
    path = array_path(writer, field)
    location.check_path(f"{path}/zarr.json")
    if not location.exists(f"{path}/zarr.json"):
        return None
    try:
        metadata = json.loads(location.read_bytes(f"{path}/zarr.json"))
    except (ValueError, UnicodeDecodeError):
        raise DistillCacheError(
            f"{location.url}/{path}/zarr.json is not valid JSON; the store is damaged"
        ) from None
    vet_metadata(metadata, spec, f"{location.url}/{path}")
    if expected_digest is not None and metadata_digest(metadata) != expected_digest:
        raise DistillCacheError(
            f"{location.url}/{path}/zarr.json does not match the description its manifests record; "
            "the store is damaged: restore it from a good copy of the store"
        )
    try:
        return sync(zarr_async.open_array(store=store, path=path, zarr_format=3))
    except DistillCacheError:
        raise
    except Exception as error:  # metadata that passed vetting but that Zarr cannot use
        raise DistillCacheError(
            f"{location.url}/{path}/zarr.json cannot be opened ({error}); the store is damaged"
        ) from None


def vet_metadata(metadata: object, spec: FieldSpec, where: str) -> None:
    expected_dtype = storage_dtype(spec.dtype).name
    problem = None
    if (
        not isinstance(metadata, dict)
        or metadata.get("zarr_format") != 3
        or metadata.get("node_type") != "array"
    ):
        problem = "it is not a Zarr v3 array"
    elif metadata.get("data_type") != expected_dtype:
        problem = f"its dtype is {metadata.get('data_type')!r}, store.json says {expected_dtype!r}"
    elif not isinstance(metadata.get("shape"), list) or tuple(metadata["shape"][1:]) != spec.shape:
        problem = f"its shape {metadata.get('shape')!r} does not end in {list(spec.shape)} as store.json says"
    elif metadata.get("storage_transformers"):
        problem = "it uses storage transformers"
    elif not _regular_grid(metadata.get("chunk_grid"), len(spec.shape) + 1):
        problem = f"its chunk grid {metadata.get('chunk_grid')!r} is not a regular grid of positive sizes"
    elif metadata.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}}:
        problem = f"its chunk key encoding {metadata.get('chunk_key_encoding')!r} is not the default one"
    else:
        unknown = sorted(codec_names(metadata.get("codecs")) - SAFE_CODECS)
        if unknown:
            problem = f"it uses codecs {unknown}; a store may only use {sorted(SAFE_CODECS)}"
    if problem:
        raise DistillCacheError(
            f"{where} is refused: {problem}; the store is damaged or was not written by distillcache"
        )


def _regular_grid(grid: object, rank: int) -> bool:
    """A regular chunk grid with `rank` positive integer sizes (what every array of a store has)."""
    if not isinstance(grid, dict) or grid.get("name") != "regular":
        return False
    shape = (grid.get("configuration") or {}).get("chunk_shape")
    return (
        isinstance(shape, list)
        and len(shape) == rank
        and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape)
    )


def codec_names(codecs: object) -> set[str]:
    """Every codec name in a codec list, the ones nested inside sharding included."""
    if not isinstance(codecs, list):
        return {"<missing codecs>"}
    names = set()
    for codec in codecs:
        if isinstance(codec, str):
            names.add(codec)
            continue
        if not isinstance(codec, dict):
            names.add(repr(codec))
            continue
        names.add(str(codec.get("name")))
        configuration = codec.get("configuration") or {}
        for nested in ("codecs", "index_codecs"):
            if nested in configuration:
                names |= codec_names(configuration[nested])
    return names


def gather(awaitables: Sequence[Awaitable]) -> list:
    """Run Zarr coroutines concurrently, in one round trip to Zarr's event loop."""

    async def run_all() -> list:
        return await asyncio.gather(*awaitables)

    return sync(run_all())


def chunk_runs(sorted_rows: np.ndarray, chunk_rows: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering sorted unique row numbers, each chunk of `chunk_rows` rows in one
    slice: a run that starts in the chunk where the previous one ends is read with it (Zarr's cost is
    per read, ~2-4 ms here, and the rows between them are decoded anyway)."""
    runs: list[tuple[int, int]] = []
    for start, stop in contiguous_runs(sorted_rows):
        if runs and start // chunk_rows == (runs[-1][1] - 1) // chunk_rows:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs


def contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering sorted unique row numbers with as few slices as possible."""
    if len(sorted_rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(sorted_rows)]])
    return [(int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1) for a, b in zip(starts, stops)]


def shard_rows_of(array: zarr.AsyncArray) -> int:
    return int(array.metadata.chunk_grid.chunk_shape[0])
