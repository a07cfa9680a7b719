"""`teacher-cache gc`: what killed writers leave behind is listed, then removed with --apply, never a
committed row, and never a commit in flight (a writer paused between its arrays and its manifest).

    .venv/bin/python -m pytest tests/test_store_gc.py -q
"""

import json
import os
import time
from datetime import datetime, timezone

import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, verify_store
from shared.store.paths import StoreLocation
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


def test_each_kind_of_garbage_is_recognised_by_its_path(tmp_path):
    from shared.store.gc import ORPHAN_GROUP, STALE_CLAIM, TEMPORARY, UNCOMMITTED_SHARD, classify
    from shared.store.paths import StoreLocation

    location = StoreLocation.open(tmp_path / "store")
    for array, rows in (("groups/w/latents", 4), ("groups/w/label", 2)):
        location.write_atomic(f"{array}/zarr.json", json.dumps(shard_grid(rows)).encode())
    location.write_atomic("groups/w/broken/zarr.json", b"{not json")
    committed = {"w": {0, 5, 6, 12}}  # latents shards of 4 rows: 0, 1 and 3 hold committed rows, 2 does not
    expected = {
        "manifest/.w-000000000000.parquet.0123abcd.tmp": TEMPORARY,
        "groups/w/latents/zarr.0123abcd.partial": TEMPORARY,
        "groups/w/latents/c/0/.0.0123abcd.tmp": TEMPORARY,  # by its own name, wherever it lies
        "manifest/w-000000000000.parquet.tmp": None,  # not hidden: not one of our temporary names
        "manifest/.hidden.parquet": None,
        "claims/dead.json": STALE_CLAIM,
        "claims/sub/dead.json": None,
        "store.json": None,
        "groups/zarr.json": None,
        "groups/w/zarr.json": None,
        "groups/dead/zarr.json": ORPHAN_GROUP,
        "groups/dead/latents/c/0/0/0/0": ORPHAN_GROUP,
        "groups/w/latents/zarr.json": None,
        "groups/w/latents/c/0/0/0/0": None,
        "groups/w/latents/c/1/0/0/0": None,
        "groups/w/latents/c/2/0/0/0": UNCOMMITTED_SHARD,  # rows 8-11: row 12 is the next shard's
        "groups/w/label/c/2": None,  # label shards of 2 rows: rows 4, 5
        "groups/w/label/c/1": UNCOMMITTED_SHARD,  # rows 2, 3
        "groups/w/label/c/x": None,
        "groups/w/label/d/1": None,
        "groups/w/label/c": None,
        "groups/w/broken/c/9": None,  # unreadable metadata: the array is left alone
        "groups/w/missing/c/9": None,
    }
    shard_rows = {}
    assert {path: classify(location, path, committed, shard_rows) for path in expected} == expected
    assert shard_rows == {
        "groups/w/latents": 4,
        "groups/w/label": 2,
        "groups/w/broken": None,
        "groups/w/missing": None,
    }


def shard_grid(rows) -> dict:
    return {"chunk_grid": {"configuration": {"chunk_shape": [rows, 3]}}}


@pytest.mark.parametrize(
    "metadata, rows",
    [
        (shard_grid(8), 8),
        (shard_grid(1), 1),
        (shard_grid(0), None),
        (shard_grid(-1), None),
        (shard_grid(2.0), None),
        ({"chunk_grid": {"configuration": {"chunk_shape": []}}}, None),
        ({"chunk_grid": {}}, None),
        ({"chunk_grid": None}, None),
        ([], None),
    ],
)
def test_rows_per_shard_come_from_a_valid_zarr_json_only(tmp_path, metadata, rows):
    from shared.store.gc import array_shard_rows
    from shared.store.paths import StoreLocation

    location = StoreLocation.open(tmp_path / "store")
    location.write_atomic("groups/w/f/zarr.json", json.dumps(metadata).encode())
    assert array_shard_rows(location, "groups/w/f") == rows


@pytest.mark.parametrize(
    "info, seconds",
    [
        ({"mtime": 1700000000.5, "LastModified": 5}, 1700000000.5),
        ({"mtime": 1700000000}, 1700000000.0),
        ({"LastModified": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}, 1704164645.0),
        ({"last_modified": "2024-01-02T03:04:05Z"}, 1704164645.0),
        ({"updated": "2024-01-02T03:04:05+01:00"}, 1704164645.0 - 3600),
        ({"created": 1704164645, "size": 3}, 1704164645.0),
        ({"mtime": None, "created": 12.0}, 12.0),
    ],
)
def test_a_files_age_comes_from_whichever_time_its_filesystem_gives(info, seconds):
    from shared.store.gc import modified_time

    assert modified_time(info) == seconds


def test_a_file_of_unknown_age_counts_as_new():
    from shared.store.gc import modified_time

    before = time.time()
    assert before <= modified_time({"size": 3}) <= time.time()


def test_gc_on_an_object_store_lists_and_removes_by_age(monkeypatch):
    from shared.store.gc import ORPHAN_GROUP, TEMPORARY, find_garbage, remove_garbage
    from tests.far_memory import new_far_url
    from tests.small_store import assert_small_reads_back, write_small

    url = new_far_url()
    write_small(url, range(4), batch_size=2)
    location = StoreLocation.open(url)
    location.fs.pipe_file(location.path("manifest/.x.parquet.0123abcd.tmp"), b"12345")
    location.fs.pipe_file(location.path("groups/dead/latents/c/0/0/0/0"), b"123")
    committed_files = set(location.fs.find(location.root))

    now = time.time()
    assert find_garbage(url, grace_seconds=3600, now=now).files == []
    later = now + 2 * 3600
    garbage = find_garbage(url, grace_seconds=3600, now=later)
    assert sorted((kind, item.relative, item.size) for kind, item in garbage.files) == [
        (ORPHAN_GROUP, "groups/dead/latents/c/0/0/0/0", 3),
        (TEMPORARY, "manifest/.x.parquet.0123abcd.tmp", 5),
    ]
    assert garbage.bytes_by_kind() == {ORPHAN_GROUP: (1, 3), TEMPORARY: (1, 5)}
    assert garbage.too_recent == [] and garbage.symlinks == []

    assert remove_garbage(garbage, now=now) == []  # checked again: not old enough at `now`
    removed = remove_garbage(garbage, now=later)
    assert sorted(item.relative for item in removed) == [
        "groups/dead/latents/c/0/0/0/0",
        "manifest/.x.parquet.0123abcd.tmp",
    ]
    assert set(location.fs.find(location.root)) == committed_files - {
        location.path("manifest/.x.parquet.0123abcd.tmp"),
        location.path("groups/dead/latents/c/0/0/0/0"),
    }
    assert_small_reads_back(StoreReader(url), range(4))


def test_a_file_exactly_as_old_as_the_grace_period_is_garbage(tmp_path):
    from shared.store.gc import find_garbage, remove_garbage

    store = tmp_path / "store"
    write_samples(store, range(2))
    (store / "manifest" / ".x.parquet.0123abcd.tmp").write_bytes(b"12345")
    os.utime(store / "manifest" / ".x.parquet.0123abcd.tmp", (1000.0, 1000.0))
    too_recent = find_garbage(store, grace_seconds=100, now=1099.5).too_recent
    assert [item.relative for item in too_recent] == ["manifest/.x.parquet.0123abcd.tmp"]
    garbage = find_garbage(store, grace_seconds=100, now=1100.0)
    assert [item.relative for _, item in garbage.files] == ["manifest/.x.parquet.0123abcd.tmp"]
    assert garbage.files[0][1].size == 5 and garbage.files[0][1].mtime == 1000.0
    assert remove_garbage(garbage, now=1099.9) == []
    assert [item.relative for item in remove_garbage(garbage, now=1100.0)] == [
        "manifest/.x.parquet.0123abcd.tmp"
    ]


def test_gc_refuses_a_folder_that_is_not_a_store(tmp_path):
    from shared.store.gc import find_garbage

    with pytest.raises(DistillCacheError) as error:
        find_garbage(tmp_path, grace_seconds=0)
    assert str(error.value) == f"{tmp_path} is not a distillcache store (no store.json); nothing to collect"


def test_removal_empties_folders_up_to_groups_and_no_further(tmp_path):
    from shared.store.gc import remove_emptied_folders

    location = StoreLocation.open(tmp_path / "store")
    for relative in ("groups/a/f/c/0/0/x", "groups/b/f/c/0/y", "groups/b/g/keep"):
        location.write_atomic(relative, b"1")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "store" / "groups" / "c")
    for relative in ("groups/a/f/c/0/0/x", "groups/b/f/c/0/y"):
        os.remove(location.path(relative))
    remove_emptied_folders(location, {"groups/a/f/c/0/0", "groups/b/f/c/0", "groups/c", "manifest"})
    left = sorted(path.relative_to(tmp_path / "store").as_posix() for path in (tmp_path / "store").rglob("*"))
    assert left == ["groups", "groups/b", "groups/b/g", "groups/b/g/keep", "groups/c"]
    assert (tmp_path / "elsewhere").is_dir()


def test_symlinks_are_listed_apart_and_never_removed(tmp_path):
    from shared.store.gc import find_garbage, remove_garbage

    store = tmp_path / "store"
    write_samples(store, range(2))
    (tmp_path / "outside").write_bytes(b"keep me")
    (store / "claims").mkdir()
    os.symlink(tmp_path / "outside", store / "claims" / "dead.json")
    os.symlink(tmp_path / "outside", store / "manifest" / ".y.parquet.0123abcd.tmp")
    garbage = find_garbage(store, grace_seconds=0, now=time.time() + 10)
    assert sorted(garbage.symlinks) == ["claims/dead.json", "manifest/.y.parquet.0123abcd.tmp"]
    assert garbage.files == []
    remove_garbage(garbage)
    assert (store / "claims" / "dead.json").is_symlink() and (tmp_path / "outside").read_bytes() == b"keep me"


def test_a_file_made_young_again_is_kept_and_the_others_still_go_zarr_json_last(tmp_path):
    """remove_garbage checks each file's age again right before removing it: one touched since the
    listing is skipped, the rest removed, and zarr.json files after every other file."""
    from shared.store.gc import find_garbage, remove_garbage

    store = tmp_path / "store"
    write_samples(store, range(2))
    names = [
        "groups/orphan/zarr.json",
        "manifest/.a.parquet.0123abcd.tmp",
        "manifest/.b.parquet.0123abcd.tmp",
    ]
    (store / "groups" / "orphan").mkdir()
    for name in names:
        (store / name).write_bytes(b"{}")
        os.utime(store / name, (1000.0, 1000.0))
    garbage = find_garbage(store, grace_seconds=100, now=2000.0)
    assert sorted(item.relative for _, item in garbage.files) == names
    first = next(item.relative for _, item in garbage.files if not item.relative.endswith("zarr.json"))
    os.utime(store / first, (1990.0, 1990.0))  # written again since the listing
    garbage.files.sort(key=lambda entry: not entry[1].relative.endswith("zarr.json"))  # listed first
    removed = [item.relative for item in remove_garbage(garbage, now=2000.0)]  # in the order removed
    expected = [name for name in names[1:] if name != first] + ["groups/orphan/zarr.json"]
    assert removed == expected and (store / first).exists()


def test_files_behind_a_linked_folder_are_never_listed(tmp_path):
    from shared.store.gc import find_garbage

    store = tmp_path / "store"
    write_samples(store, range(2))
    (tmp_path / "outside" / "claims").mkdir(parents=True)
    (tmp_path / "outside" / "claims" / "dead.json").write_bytes(b"keep me")
    os.symlink(tmp_path / "outside", store / "groups" / "linked")
    garbage = find_garbage(store, grace_seconds=0, now=time.time() + 10)
    assert garbage.symlinks == ["groups/linked"] and garbage.files == []


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_a_files_current_time_is_its_own_and_none_when_it_is_gone_or_a_link(tmp_path, kind):
    from shared.store.gc import current_mtime
    from tests.far_memory import new_far_url

    location = StoreLocation.open(tmp_path / "store" if kind == "local" else new_far_url())
    before = time.time()
    location.write_atomic("manifest/x", b"1")
    assert before - 1 <= current_mtime(location, "manifest/x") <= time.time() + 1
    assert current_mtime(location, "manifest/gone") is None
    if kind == "local":
        (tmp_path / "target").write_bytes(b"1")
        os.symlink(tmp_path / "target", tmp_path / "store" / "manifest" / "link")
        assert current_mtime(location, "manifest/link") is None  # a link is never garbage to remove
