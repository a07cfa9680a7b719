"""Nothing outside the store, and nothing missing read as data: a symlink anywhere in a store is refused
before any byte behind it is read (even one that points inside the store), and a deleted chunk is a
checksum error, not zeros.

    .venv/bin/python -m pytest tests/test_store_links.py -q
"""

import shutil

import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, verify_store
from shared.store.reader import DamagedRowsError
from teacher_cache.cli import main
from tests.store_fixtures import write_samples, writer_groups

SECRET = b"root:x:0:0:secret-bytes-outside-the-store\n"


@pytest.fixture
def store(tmp_path):
    write_samples(tmp_path / "store", range(4), batch_size=2)
    (tmp_path / "outside").write_bytes(SECRET)
    return tmp_path / "store"


def link_in_place_of(path, target) -> None:
    path.unlink()
    path.symlink_to(target)


def shard(store, field="preview", index=1):
    (group,) = writer_groups(store)
    return next(path for path in (group / field / "c" / str(index)).rglob("*") if path.is_file())


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_chunk_file_that_is_a_link_is_refused_by_reads_and_verify(store, target, capsys):
    victim = shard(store)
    link_in_place_of(victim, store.parent / "outside" if target == "outside" else shard(store, index=0))
    reader = StoreReader(store)
    with pytest.raises(DistillCacheError, match="symbolic link") as refused:
        reader.read("preview", range(4))
    assert "secret-bytes" not in str(refused.value)
    assert main(["verify", str(store)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "symbolic link" in error and "secret-bytes" not in error


def test_store_json_and_manifest_links_are_refused(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    (copy / "store.json").unlink()
    (copy / "store.json").symlink_to(store / "store.json")  # the same bytes, through a link
    with pytest.raises(DistillCacheError, match="symbolic link"):
        StoreReader(copy)
    manifest = next((store / "manifest").glob("*.parquet"))
    moved = tmp_path / manifest.name
    shutil.move(manifest, moved)
    manifest.symlink_to(moved)
    with pytest.raises(DistillCacheError, match="symbolic link"):
        StoreReader(store)


def test_a_linked_manifest_folder_is_refused(store, tmp_path):
    shutil.move(store / "manifest", tmp_path / "elsewhere")
    (store / "manifest").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DistillCacheError, match="symbolic link"):
        StoreReader(store)


def test_a_deleted_chunk_is_a_checksum_error_not_zeros(store):
    shard(store, field="trajectory", index=1).unlink()  # rows 2 and 3 of the group read as fill values
    reader = StoreReader(store)
    rows = [row for row in range(4) if reader.manifest.column("row")[row].as_py() >= 2]
    with pytest.raises(DamagedRowsError, match="does not match its checksum"):
        reader.read("trajectory", rows)
    assert {(entry["row"], entry["reason"]) for entry in verify_store(store)} == {
        (2, "checksum mismatch"),
        (3, "checksum mismatch"),
    }
