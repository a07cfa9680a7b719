"""What manifest files are named and what they record, against values computed here: a compacted file's
name starts with the UTC time to the microsecond (so names sort oldest first), a commit's file with
`<writer>-<first row, 12 digits>` and ends in the CRC-32C of its bytes, and the array digests a reader
gets back are sha256 of each zarr.json without its row count.

    .venv/bin/python -m pytest tests/test_store_manifest_names.py -q
"""

import hashlib
import json
import os
import re
import time
from datetime import datetime, timezone

import crc32c
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.errors import DistillCacheError
from shared.store import StoreWriter
from shared.store.compaction import compact_store
from shared.store.manifest import ARRAYS_KEY, ManifestFiles, compacted_stem, publish
from shared.store.paths import StoreLocation
from tests.small_store import FIELDS, small_arrays, small_ids, small_row, small_writer, write_small


def test_a_compacted_file_is_named_after_the_utc_time_to_the_microsecond():
    old_zone = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14: the local time is never the UTC time
    time.tzset()
    try:
        check_compacted_stem()
    finally:
        if old_zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_zone
        time.tzset()


def check_compacted_stem():
    before = time.time()
    stem = compacted_stem()
    after = time.time()
    match = re.fullmatch(r"manifest/compacted/c(\d{8}T\d{6})(\d{6})-[0-9a-f]+", stem)
    assert match, stem
    stamp = datetime.strptime(match[1], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    stamp += int(match[2]) / 1e6
    assert before - 1e-6 <= stamp <= after + 1e-6
    later = compacted_stem()
    assert later[: len("manifest/compacted/c") + 21] >= stem[: len("manifest/compacted/c") + 21]


def test_commit_files_are_named_by_writer_first_row_and_crc32c(tmp_path):
    store = tmp_path / "store"
    write_small(store, range(5), batch_size=2, writer_id="w")  # rows 0-1, 2-3, 4
    names = sorted(path.name for path in (store / "manifest").glob("*.parquet"))
    assert [name[: len("w-000000000000")] for name in names] == [
        "w-000000000000",
        "w-000000000002",
        "w-000000000004",
    ]
    for name in names:
        assert name.endswith(f"-{crc32c.crc32c((store / 'manifest' / name).read_bytes()):08x}.parquet")


def test_array_digests_are_the_sha256_of_each_zarr_json_without_its_row_count(tmp_path):
    store = tmp_path / "store"
    write_small(store, range(3), writer_id="w")
    files = ManifestFiles(StoreLocation.open(store), list(FIELDS))
    files.refresh()
    expected = {}
    for field in FIELDS:
        metadata = json.loads((store / "groups" / "w" / field / "zarr.json").read_text())
        metadata["shape"][0] = None
        canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        expected[field] = hashlib.sha256(canonical.encode()).hexdigest()
    assert files.array_digests("w") == expected
    assert files.writer_digests() == {"w": expected}
    assert files.array_digests("nobody") == {}


def test_the_time_in_a_compacted_name_is_seconds_then_six_digits_of_microseconds(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1_700_000_001.75)  # 2023-11-14 22:13:21.75 UTC
    assert re.fullmatch(r"manifest/compacted/c20231114T221321750000-[0-9a-f]+", compacted_stem())


def test_files_read_before_a_compaction_are_no_longer_live_after_it(tmp_path):
    store = tmp_path / "store"
    write_small(store, range(6), batch_size=2, writer_id="w")
    files = ManifestFiles(StoreLocation.open(store), list(FIELDS))
    files.refresh()
    assert [name[:14] for name in files.live_names()] == [
        "w-000000000000",
        "w-000000000002",
        "w-000000000004",
    ]
    compact_store(store, grace_seconds=0)
    files.refresh()
    (live,) = files.live_names()
    assert live.startswith("compacted/c")
    assert sorted(files.all_rows().column("sample_id").to_pylist()) == sorted(small_ids(range(6)))


def test_a_store_with_no_commit_yet_has_an_empty_manifest_with_typed_columns(tmp_path, monkeypatch):
    store = tmp_path / "store"
    writer = small_writer(store, writer_id="w")
    monkeypatch.setattr(
        StoreWriter, "_publish_manifest", lambda *args: (_ for _ in ()).throw(OSError("lost"))
    )
    with pytest.raises(DistillCacheError):
        writer.commit([small_row(0)], {name: small_arrays(0)[name][None] for name in FIELDS})
    files = ManifestFiles(StoreLocation.open(store), list(FIELDS))
    files.refresh()
    rows = files.all_rows()
    assert rows.num_rows == 0
    assert {field.name: str(field.type) for field in rows.schema} == {
        "sample_id": "string",
        "prompt": "string",
        "negative_prompt": "string",
        "seed": "int64",
        "guidance_scale": "double",
        "num_inference_steps": "int64",
        "split": "string",
        "writer": "string",
        "row": "int64",
        "checksum_latents": "int64",
        "checksum_label": "int64",
    }


def test_two_files_giving_one_row_other_checksums_are_refused(tmp_path):
    store = tmp_path / "store"
    write_small(store, range(2), batch_size=2, writer_id="w")
    (path,) = (store / "manifest").glob("w-*.parquet")
    table = pq.read_table(path)
    digests = json.loads(table.schema.metadata[ARRAYS_KEY])
    column = table.schema.get_field_index("checksum_label")
    changed = table.set_column(column, "checksum_label", pa.array([1, 2], pa.int64()))
    publish(
        StoreLocation.open(store), changed.replace_schema_metadata(None), "manifest/w-000000000000", digests
    )
    files = ManifestFiles(StoreLocation.open(store), list(FIELDS))
    files.refresh()
    with pytest.raises(DistillCacheError, match="row 0 of writer w different checksum_label"):
        files.all_rows()
