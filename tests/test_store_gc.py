"""`teacher-cache gc`: what killed writers leave behind is listed, then removed with --apply, never a
committed row, and never a commit in flight (a writer paused between its arrays and its manifest).

    .venv/bin/python -m pytest tests/test_store_gc.py -q
"""

import os
import time

import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, verify_store
from teacher_cache.cli import main
from tests.store_fixtures import assert_reads_back, batch_for, write_samples
from tests.test_store_processes import finish, start_writer

TWO_DAYS = 2 * 24 * 3600


def files_of(folder) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def age_everything(folder, seconds: float) -> None:
    old = time.time() - seconds
    for path in folder.rglob("*"):
        os.utime(path, (old, old), follow_symlinks=False)


def killed_commit(store, indices, writer_id=None, monkeypatch=None) -> StoreWriter:
    """A writer whose commit of `indices` wrote its arrays and died before publishing its manifest."""
    writer = write_samples(store, [], writer_id=writer_id)
    with monkeypatch.context() as patch:
        patch.setattr(
            StoreWriter, "_publish_manifest", lambda *args: (_ for _ in ()).throw(OSError("killed"))
        )
        with pytest.raises(DistillCacheError, match="killed"):
            writer.commit(*batch_for(indices))
    return writer


def test_gc_lists_then_removes_only_what_no_commit_needs(tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    committed = write_samples(store, range(6), batch_size=2, writer_id="rank0")  # shards 0, 1, 2 of rank0
    before_garbage = files_of(store)
    killed_commit(store, [6, 7], writer_id="rank0", monkeypatch=monkeypatch)  # rank0's shard 3: unreferenced
    killed_commit(store, [8, 9], writer_id="dead", monkeypatch=monkeypatch)  # a group no manifest names
    (store / "manifest" / ".rank0-000000000008.parquet.0123abcd.tmp").write_bytes(b"half a file")
    (store / "groups" / "rank0" / "preview" / "zarr.0123abcd.partial").write_bytes(b"half")
    (store / "claims").mkdir()
    (store / "claims" / "dead.json").write_text('["a-sample-id"]')  # a killed writer's claim
    garbage = files_of(store) - before_garbage
    expected_shards = {
        path
        for path in garbage
        if path.startswith("groups/rank0/") and f"{path}/".split("/")[3:5] == ["c", "3"]
    }
    expected_orphans = {path for path in garbage if path.startswith("groups/dead/")}
    assert expected_shards and expected_orphans and committed.writer_id == "rank0"
    # the killed commit of rank0 rewrote its zarr.json files (resize): those stay, with every committed shard
    assert garbage - expected_shards - expected_orphans == {
        "manifest/.rank0-000000000008.parquet.0123abcd.tmp",
        "groups/rank0/preview/zarr.0123abcd.partial",
        "claims/dead.json",
    }

    assert main(["gc", str(store)]) == 0  # recent: kept, nothing listed for removal
    assert "nothing to remove" in capsys.readouterr().out and files_of(store) >= garbage

    age_everything(store, TWO_DAYS)
    assert main(["gc", str(store)]) == 0  # dry run: lists, removes nothing
    listing = capsys.readouterr().out
    assert (
        "orphan groups: " in listing
        and "uncommitted shards: " in listing
        and "temporary files: 2 files" in listing
        and "stale claims: 1 files" in listing
    )
    assert files_of(store) >= garbage

    assert main(["gc", str(store), "--apply"]) == 0
    assert not (files_of(store) & garbage)
    assert not (store / "groups" / "dead").exists()  # the emptied group folder went too
    reader = StoreReader(store)
    assert_reads_back(reader, range(6))
    assert verify_store(store) == []
    # rank0 continues on a fresh shard after its removed one: the next commit cannot land on garbage
    write_samples(store, range(10), batch_size=2, writer_id="rank0")
    assert_reads_back(StoreReader(store), range(10))


@pytest.mark.slow  # a real writer process
def test_gc_beside_a_running_writer_leaves_its_commit_in_flight_alone(tmp_path):
    store = tmp_path / "store"
    write_samples(store, range(4), batch_size=2)
    (store / "manifest" / ".old.parquet.0123abcd.tmp").write_bytes(b"left by a killed writer")
    age_everything(store, TWO_DAYS)
    go = tmp_path / "go"
    writer = start_writer(store, 4, 12, "--batch-size", "4", "--hang-at-commit", "2", "--go-file", str(go))
    try:
        for line in writer.stdout:
            if line.strip() == "ARRAYS_WRITTEN":  # second commit: arrays on disk, manifest not yet
                break
        in_flight = files_of(store)
        assert main(["gc", str(store), "--apply"]) == 0
        assert files_of(store) == in_flight - {"manifest/.old.parquet.0123abcd.tmp"}
        go.write_text("publish")
    finally:
        if not go.exists():
            writer.kill()
    finish(writer)
    assert_reads_back(StoreReader(store), range(12))
    assert verify_store(store) == []
