"""A seeded sweep of single-bit flips over every file type of a small store: no flip may change what a
reader returns without `verify` or the reader saying so.

Each flip is judged through the command line and the reader, as a user meets them: `teacher-cache
verify STORE` must exit 1 or 2 (damage found / store refused, one line) or 0; with 0, a fresh reader
must return exactly the store's original description, manifest and arrays — anything else is a
silent change. Any error that is not the one-line DistillCacheError fails the test. Every byte of
every file is covered (chunks: CRC-32C of the encoded chunk; shard indexes: their CRC-32C; array
zarr.json: the digest the manifests record; group zarr.json: exact content; manifests: the CRC-32C in
their name; store.json: its digest), so every flip must be caught, none merely harmless.

    .venv/bin/python -m pytest tests/test_store_byte_flips.py -q
"""

import random
import shutil

import numpy as np
import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader
from teacher_cache.cli import main
from tests.store_fixtures import write_samples

FLIPS_PER_KIND = 10
KINDS = ("chunk", "shard index", "array zarr.json", "group zarr.json", "manifest", "store.json")


def store_content(store) -> dict:
    """Everything a reader returns: description, committed rows, every field of every row (verified)."""
    reader = StoreReader(store)
    rows = np.arange(len(reader))
    return {
        "fingerprint": reader.fingerprint,
        "teacher": reader.teacher,
        "settings": reader.settings,
        "fields": reader.fields,
        "manifest": reader.manifest.to_pylist(),
        "arrays": {name: reader.read_stored(name, rows).tobytes() for name in reader.fields},
    }


def files_of_kind(store, kind: str) -> list:
    groups = store / "groups"
    if kind in ("chunk", "shard index"):
        return sorted(path for path in groups.rglob("*") if path.is_file() and "/c/" in path.as_posix())
    if kind == "array zarr.json":
        return sorted(path for path in groups.glob("*/*/zarr.json"))
    if kind == "group zarr.json":
        return sorted([store / "zarr.json", groups / "zarr.json", *groups.glob("*/zarr.json")])
    if kind == "manifest":
        return sorted((store / "manifest").glob("*.parquet"))
    return [store / "store.json"]


def flip_position(path, kind: str, rng: random.Random) -> int:
    size = path.stat().st_size
    if kind == "shard index":  # the index of a shard sits at its end: 16 bytes per chunk + a CRC-32C
        return size - 1 - rng.randrange(min(size, 36))
    return rng.randrange(size)


@pytest.mark.parametrize("kind", KINDS)
def test_no_single_bit_flip_changes_a_read_silently(tmp_path, kind, capsys):
    pristine = tmp_path / "pristine"
    write_samples(pristine, range(8), batch_size=3)
    original = store_content(pristine)
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    rng = random.Random(f"byte-flips-{kind}")
    outcomes = {"caught": 0, "unchanged": 0}
    for _ in range(FLIPS_PER_KIND):
        path = rng.choice(files_of_kind(store, kind))
        data = bytearray(path.read_bytes())
        position = flip_position(path, kind, rng)
        data[position] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            status = main(["verify", str(store)])
            error = capsys.readouterr().err
            assert status in (0, 1, 2), status
            if status:  # found: one line on stderr for 2, a summary line for 1
                assert error.startswith("teacher-cache"), error
                outcomes["caught"] += 1
                continue
            try:
                content = store_content(store)
            except DistillCacheError:  # a verified read that refuses is not silent either
                outcomes["caught"] += 1
                continue
            assert content == original, f"flip at byte {position} of {path.relative_to(store)} changed a read"
            outcomes["unchanged"] += 1
        finally:
            shutil.copy2(pristine / path.relative_to(store), path)
    # every byte of every file is covered by a checksum, a digest or an exact-content check
    assert outcomes == {"caught": FLIPS_PER_KIND, "unchanged": 0}
