"""What the store refuses: other settings, other format versions, paths out of the store, pickle codecs,
and damaged bytes (verify names the row).

    .venv/bin/python -m pytest tests/test_store_safety.py -q
"""

import hashlib
import json
import pickle
import shutil

import pyarrow.parquet as pq
import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, verify_store
from shared.store.manifest import ARRAYS_KEY, publish
from shared.store.paths import StoreLocation
from shared.store.reader import DamagedRowsError
from tests.store_fixtures import (
    FIELDS,
    FINGERPRINT,
    SETTINGS,
    TEACHER,
    assert_reads_back,
    batch_for,
    index_by_sample_id,
    write_samples,
    writer_groups,
)


def snapshot(folder) -> dict:
    return {
        path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


@pytest.mark.parametrize(
    "change, named",
    [
        ({"fingerprint": {**FINGERPRINT, "weights_hash": "1" * 64}}, "fingerprint.weights_hash"),
        ({"settings": {**SETTINGS, "num_inference_steps": 50}}, "settings.num_inference_steps"),
        ({"fields": {**FIELDS, "noise": FIELDS["out_cond"]}}, "field noise"),
    ],
)
def test_appending_with_another_teacher_settings_or_fields_is_refused(tmp_path, change, named):
    write_samples(tmp_path / "store", range(4))
    before = snapshot(tmp_path / "store")
    options = {
        "fingerprint": FINGERPRINT,
        "teacher": TEACHER,
        "settings": SETTINGS,
        "fields": FIELDS,
        **change,
    }
    with pytest.raises(DistillCacheError, match=named.replace(".", r"\.")):
        StoreWriter(tmp_path / "store", **options)
    assert snapshot(tmp_path / "store") == before


def edit_store_json(folder, edit, redigest: bool = True) -> None:
    """Change store.json; with `redigest`, as a hostile store would, with a digest that matches again."""
    path = folder / "store.json"
    data = json.loads(path.read_text())
    edit(data)
    if redigest:
        content = {key: value for key, value in data.items() if key != "digest"}
        data["digest"] = hashlib.sha256(
            json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
    path.write_text(json.dumps(data))


def test_an_unknown_format_version_is_refused_by_reader_and_writer(tmp_path):
    write_samples(tmp_path / "store", range(2))
    edit_store_json(tmp_path / "store", lambda data: data.update(format_version=3))
    with pytest.raises(DistillCacheError, match="format version 3"):
        StoreReader(tmp_path / "store")
    with pytest.raises(DistillCacheError, match="format version 3"):
        StoreWriter(
            tmp_path / "store", fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=FIELDS
        )


def test_a_format_1_store_is_refused_with_what_to_do(tmp_path):
    write_samples(tmp_path / "store", range(2))
    edit_store_json(tmp_path / "store", lambda data: data.update(format_version=1), redigest=False)
    with pytest.raises(DistillCacheError, match=r"format 1.*teacher-cache run --out NEW_STORE"):
        StoreReader(tmp_path / "store")


def test_a_store_json_edited_without_its_digest_is_refused(tmp_path):
    write_samples(tmp_path / "store", range(2))
    edit_store_json(
        tmp_path / "store", lambda data: data["settings"].update(guidance_scale=7.5), redigest=False
    )
    with pytest.raises(DistillCacheError, match="store.json does not match its digest"):
        StoreReader(tmp_path / "store")


def test_appending_with_the_same_teacher_from_another_place_is_allowed(tmp_path):
    write_samples(tmp_path / "store", range(2))
    elsewhere = {"source": "/mnt/other/copy", "revision": None}
    writer = StoreWriter(
        tmp_path / "store", fingerprint=FINGERPRINT, teacher=elsewhere, settings=SETTINGS, fields=FIELDS
    )
    writer.commit(*batch_for(range(2, 4)))
    reader = StoreReader(tmp_path / "store")
    assert len(reader) == 4 and reader.teacher == TEACHER  # the record stays as the first writer wrote it


def test_a_store_json_naming_a_path_outside_the_store_is_refused(tmp_path):
    write_samples(tmp_path / "store", range(2))
    edit_store_json(
        tmp_path / "store", lambda data: data["fields"].update({"../../secret": data["fields"]["preview"]})
    )
    with pytest.raises(DistillCacheError, match="not allowed"):
        StoreReader(tmp_path / "store")


def republish(manifest, table) -> None:
    """Replace a manifest file by `table`, as a hostile store would: with a name whose checksum matches."""
    digests = json.loads(pq.read_schema(manifest).metadata[ARRAYS_KEY])
    store = manifest.parent.parent
    manifest.unlink()
    publish(StoreLocation.open(store), table, f"manifest/{manifest.name.rsplit('-', 1)[0]}", digests)


def test_a_manifest_naming_a_writer_outside_the_store_is_refused(tmp_path):
    write_samples(tmp_path / "store", range(2))
    manifest = next((tmp_path / "store" / "manifest").glob("*.parquet"))
    table = pq.read_table(manifest)
    escaped = table.set_column(
        table.column_names.index("writer"), "writer", [["../../elsewhere"] * table.num_rows]
    )
    republish(manifest, escaped)
    with pytest.raises(DistillCacheError, match="not allowed"):
        StoreReader(tmp_path / "store")


def test_a_group_linked_to_a_folder_outside_the_store_is_refused(tmp_path):
    write_samples(tmp_path / "store", range(2))
    (group,) = writer_groups(tmp_path / "store")
    shutil.move(group, tmp_path / "outside")
    group.symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DistillCacheError, match="symbolic link"):
        StoreReader(tmp_path / "store").read("preview", [0])


def test_nothing_in_a_store_is_unpickled(tmp_path, monkeypatch):
    write_samples(tmp_path / "store", range(6))

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the store tried to unpickle something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_unpickling)
    assert_reads_back(StoreReader(tmp_path / "store"), range(6))
    assert verify_store(tmp_path / "store") == []


def test_an_array_with_a_pickle_codec_is_refused_before_it_is_read(tmp_path):
    write_samples(tmp_path / "store", range(2))
    metadata_path = next((tmp_path / "store" / "groups").glob("*/preview/zarr.json"))
    metadata = json.loads(metadata_path.read_text())
    metadata["codecs"][0]["configuration"]["codecs"].insert(
        0, {"name": "numcodecs.pickle", "configuration": {}}
    )
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(DistillCacheError, match="numcodecs.pickle"):
        StoreReader(tmp_path / "store").read("preview", [0])


@pytest.mark.parametrize("compressor", ["zstd", "none"])
@pytest.mark.parametrize("where", ["chunk", "index"])
def test_one_flipped_byte_is_found_and_named(tmp_path, compressor, where):
    # batch_size 1: each commit is its own shard, so one shard file holds one row of a field
    write_samples(tmp_path / "store", range(5), batch_size=1, compressor=compressor)
    (group,) = writer_groups(tmp_path / "store")
    shard = group / "out_cond" / "c" / "3" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    position = 40 if where == "chunk" else len(data) - 6
    data[position] ^= 0xFF
    shard.write_bytes(bytes(data))

    bad = verify_store(tmp_path / "store")
    reader = StoreReader(tmp_path / "store")
    row = reader.manifest.column("row").to_pylist().index(3)
    sample_id = reader.manifest.column("sample_id")[row].as_py()
    assert [{key: value for key, value in entry.items() if key != "reason"} for entry in bad] == [
        {"sample_id": sample_id, "writer": group.name, "row": 3, "field": "out_cond"}
    ]
    assert bad[0]["reason"] == "checksum mismatch" or bad[0]["reason"].startswith("cannot be decoded")
    assert sorted(index_by_sample_id(range(5))) == sorted(reader.manifest.column("sample_id").to_pylist())
    # every read checks: the damaged row is one line naming it, on whole-row and step reads alike
    for steps in (None, [2]):
        with pytest.raises(DamagedRowsError, match=f"field 'out_cond' of row {sample_id}"):
            reader.read("out_cond", [row], steps=steps)
    others = [index for index in range(5) if index != row]
    assert reader.read("out_cond", others).shape == (4, 5, 4, 8, 8)  # the rest reads fine
