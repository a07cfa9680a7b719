"""Compaction: many manifest files folded into one, every committed row seen exactly once before, during
and after, by readers in this process while writers and compactors run in others (on disk and on S3).

    .venv/bin/python -m pytest tests/test_store_compaction.py -q
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, verify_store
from shared.store.compaction import compact_store
from shared.store.gc import find_garbage
from shared.store.manifest import ManifestFiles, publish_compacted
from shared.store.paths import StoreLocation
from teacher_cache.cli import main
from tests.small_store import FIELDS as SMALL_FIELDS
from tests.small_store import assert_small_reads_back, small_ids, write_small
from tests.store_fixtures import (
    FIELDS,
    FINGERPRINT,
    SETTINGS,
    TEACHER,
    assert_reads_back,
    batch_for,
    index_by_sample_id,
    write_samples,
)
from tests.test_store_processes import REPO, start_writer

KEY = ["sample_id", "writer", "row"]


def manifest_files(store: Path) -> list[Path]:
    return sorted((store / "manifest").rglob("*.parquet"))


def rows_of_files(paths) -> pa.Table:
    """Every row of the given manifest files, read with pyarrow alone (not the code under test)."""
    table = pa.concat_tables([pq.read_table(path).replace_schema_metadata(None) for path in paths])
    return table.sort_by([(name, "ascending") for name in KEY])


def racing_store(store: Path) -> None:
    """Two writers, 3-row commits, and one sample (index 4) committed by both: a racing duplicate."""
    write_samples(store, range(0, 14), batch_size=3)
    write_samples(store, range(14, 20), batch_size=3)
    writer = StoreWriter(store, fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=FIELDS)
    writer.commit(*batch_for([4]))


def test_compaction_folds_every_file_into_one_and_readers_see_the_same_rows(tmp_path):
    store = tmp_path / "store"
    racing_store(store)
    commit_files = manifest_files(store)
    before = StoreReader(store)
    assert len(commit_files) == 5 + 2 + 1 and before.duplicates.num_rows == 1

    report = compact_store(store, grace_seconds=3600)
    assert (report.folded, report.rows, report.removed) == (8, 21, [])
    compacted = store / report.written
    # the compacted file holds exactly the rows of the files it replaces, every column, sorted
    assert rows_of_files([compacted]).equals(rows_of_files(commit_files))
    assert pq.read_table(compacted).column("sample_id").to_pylist() == sorted(
        rows_of_files(commit_files).column("sample_id").to_pylist()
    )
    after = StoreReader(store)  # the replaced files are still there (grace period): each row once
    assert after.manifest.equals(before.manifest) and after.duplicates.equals(before.duplicates)
    assert compact_store(store, grace_seconds=3600).written is None  # nothing new to fold
    assert set(manifest_files(store)) == {*commit_files, compacted}

    report = compact_store(store, grace_seconds=0)  # now older than the (zero) grace period
    assert sorted(report.removed) == sorted(path.name for path in commit_files) and report.written is None
    assert manifest_files(store) == [compacted]
    final = StoreReader(store)
    assert final.manifest.equals(before.manifest) and final.duplicates.equals(before.duplicates)
    assert_reads_back(final, range(20))
    assert verify_store(store) == []


def test_an_open_after_compaction_reads_one_file(tmp_path, monkeypatch):
    store = tmp_path / "store"
    write_samples(store, range(30), batch_size=2)
    compact_store(store, grace_seconds=3600)  # the 15 replaced files stay listed
    write_samples(store, range(30, 34), batch_size=2)  # two newer commits
    reads = []
    original = StoreLocation.read_bytes_if_exists
    monkeypatch.setattr(
        StoreLocation,
        "read_bytes_if_exists",
        lambda self, relative: reads.append(relative) or original(self, relative),
    )
    assert_reads_back(StoreReader(store), range(34))
    assert len([path for path in reads if path.startswith("manifest/")]) == 1 + 2


def test_a_file_removed_between_listing_and_reading_is_found_in_its_replacement(tmp_path, monkeypatch):
    store = tmp_path / "store"
    write_samples(store, range(12), batch_size=2)
    listings = []
    original = ManifestFiles._list

    def list_then_compact(self):
        names = original(self)
        if not listings or listings[0][0] is self:  # the reader's listings, not the compactor's
            listings.append((self, names))
            if len(listings) == 1:  # a compactor runs twice between this reader's listing and its reads
                compact_store(store, grace_seconds=0)
                compact_store(store, grace_seconds=0)
        return names

    monkeypatch.setattr(ManifestFiles, "_list", list_then_compact)
    reader = StoreReader(store)
    assert len(listings) == 2 and len(listings[1][1]) == 1  # listed again, found the compacted file only
    assert_reads_back(reader, range(12))


def test_two_compactions_made_at_once_overlap_and_each_row_is_still_read_once(tmp_path):
    store = tmp_path / "store"
    write_samples(store, range(6), batch_size=2)
    location = StoreLocation.open(store)
    first = ManifestFiles(location, list(FIELDS))
    first.refresh()  # one compactor has read the manifest ...
    write_samples(store, range(6, 10), batch_size=2)
    second = ManifestFiles(location, list(FIELDS))
    second.refresh()  # ... another reads it with two more commits ...
    for files in (second, first):  # ... and both publish what they read
        publish_compacted(location, files.all_rows(), files.writer_digests(), files.live_names())
    assert len(list((store / "manifest" / "compacted").glob("*.parquet"))) == 2
    reader = StoreReader(store)
    assert reader.duplicates.num_rows == 0
    assert_reads_back(reader, range(10))
    compact_store(store, grace_seconds=0)  # folds the two into one, rows once
    compact_store(store, grace_seconds=0)
    assert len(manifest_files(store)) == 1
    assert rows_of_files(manifest_files(store)).num_rows == 10
    assert_reads_back(StoreReader(store), range(10))


def test_a_damaged_compacted_file_is_one_line(tmp_path, capsys):
    store = tmp_path / "store"
    write_samples(store, range(6), batch_size=2)
    report = compact_store(store, grace_seconds=0)
    compact_store(store, grace_seconds=0)
    path = store / report.written
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(DistillCacheError, match="does not match the checksum in its name"):
        StoreReader(store)
    assert main(["verify", str(store)]) == 2
    assert "compacted/" in capsys.readouterr().err


def test_gc_after_compaction_finds_nothing_committed_to_remove(tmp_path):
    store = tmp_path / "store"
    write_samples(store, range(10), batch_size=3)
    compact_store(store, grace_seconds=0)
    compact_store(store, grace_seconds=0)
    assert find_garbage(store, grace_seconds=0).files == []
    assert verify_store(store) == []


def test_a_writer_keeps_resuming_correctly_across_a_compaction(tmp_path):
    store = tmp_path / "store"
    writer = write_samples(store, range(6), batch_size=2)
    compact_store(store, grace_seconds=0)
    compact_store(store, grace_seconds=0)  # the files this writer had read are gone
    write_samples(store, range(6, 9), batch_size=2)  # another writer
    assert writer.committed_ids == set(index_by_sample_id(range(9)))


def test_compact_command_prints_what_it_did(tmp_path, capsys):
    store = tmp_path / "store"
    write_samples(store, range(6), batch_size=2)
    assert main(["compact", str(store)]) == 0
    out = capsys.readouterr().out
    assert "folded 3 manifest files (6 rows)" in out and "nothing" not in out
    assert main(["compact", str(store), "--grace-minutes", "0"]) == 0
    out = capsys.readouterr().out
    assert "removed 3 manifest files" in out and "nothing to fold" in out
    assert main(["compact", str(store), "--grace-minutes", "-1"]) == 2
    assert main(["compact", str(tmp_path / "none")]) == 2
    assert "not a distillcache store" in capsys.readouterr().err


def test_replaced_files_wait_until_their_replacement_is_exactly_as_old_as_the_grace_period(
    tmp_path, monkeypatch
):
    store = tmp_path / "store"
    write_small(store, range(6), batch_size=2)  # 3 commit files
    commit_files = sorted(path.name for path in manifest_files(store))
    first = compact_store(store, grace_seconds=3600)
    published = (store / first.written).stat().st_mtime
    monkeypatch.setattr("shared.store.compaction.time.time", lambda: published + 99.99)
    report = compact_store(store, grace_seconds=100)
    assert (report.removed, report.waiting, report.written) == ([], 3, None)
    monkeypatch.setattr("shared.store.compaction.time.time", lambda: published + 100)
    report = compact_store(store, grace_seconds=100)
    assert (sorted(report.removed), report.waiting, report.written) == (commit_files, 0, None)
    assert manifest_files(store) == [store / first.written]
    assert_small_reads_back(StoreReader(store), range(6))


def test_replaced_files_wait_while_their_replacement_cannot_be_dated(tmp_path, monkeypatch):
    """A replacement whose time cannot be read (removed by another compaction since the listing) is
    not known to be old enough: the files it replaces stay, counted as waiting."""
    store = tmp_path / "store"
    write_small(store, range(6), batch_size=2)  # 3 commit files
    compact_store(store, grace_seconds=0)
    monkeypatch.setattr("shared.store.compaction.current_mtime", lambda location, key: None)
    report = compact_store(store, grace_seconds=0)
    assert (report.removed, report.waiting, report.written) == ([], 3, None)
    assert len(manifest_files(store)) == 4


def test_compaction_waits_for_min_files_live_files_and_never_folds_one(tmp_path):
    from shared.store.compaction import live_commit_files

    store = tmp_path / "store"
    write_small(store, range(2), batch_size=2)
    assert compact_store(store, min_files=1).written is None  # one file: nothing to fold into it
    write_small(store, range(6), batch_size=2)  # 3 commit files now
    files = ManifestFiles(StoreLocation.open(store), list(SMALL_FIELDS))
    files.refresh()
    assert live_commit_files(files) == 3
    report = compact_store(store, min_files=4)
    assert (report.written, report.folded, report.rows) == (None, 0, 0)
    report = compact_store(store, min_files=3, files=files)  # a writer's files, reused and refreshed
    assert (report.folded, report.rows) == (3, 6) and report.written.startswith("manifest/compacted/")
    files.refresh()
    assert live_commit_files(files) == 0  # every commit file's rows are in the compacted file
    write_small(store, range(8), batch_size=2)
    files.refresh()
    assert live_commit_files(files) == 1
    assert_small_reads_back(StoreReader(store), range(8))


def test_compacting_a_folder_that_is_not_a_store_is_one_line(tmp_path):
    with pytest.raises(DistillCacheError) as error:
        compact_store(tmp_path)
    assert str(error.value) == f"{tmp_path} is not a distillcache store (no store.json); nothing to compact"


# --- concurrent processes: a writer and two compactors, a reader opening the store over and over ---


def committed_so_far(log: Path) -> set[int]:
    """Sample indices whose commit had returned when the log was read (complete lines only)."""
    text = log.read_text() if log.exists() else ""
    return {int(index) for line in text[: text.rfind("\n") + 1].splitlines() for index in line.split()}


def read_while_others_compact(url: str, tmp_path: Path, samples: int, batch_size: int) -> tuple[int, int]:
    """Start a writer of `samples` samples and two compactors; open the store over and over until the
    writer is done, checking each open: every sample at most once, every sample whose commit returned
    before the open present, nothing seen before missing. Returns (opens, compactions)."""
    log, stop, compacted = tmp_path / "commits.log", tmp_path / "stop", tmp_path / "compactions.log"
    # a compaction between any two commits (--paced-by), so the race is exercised on any machine
    writer = start_writer(
        url,
        0,
        samples,
        "--batch-size",
        str(batch_size),
        "--log",
        str(log),
        "--small",
        "--paced-by",
        str(compacted),
    )
    compactors = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.store_compactor_process", url, str(stop), "--log", str(compacted)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    by_id = small_ids(range(samples))
    seen: set[int] = set()
    opens = 0
    try:
        while True:
            done = writer.poll() is not None
            committed = committed_so_far(log)
            try:
                reader = StoreReader(url)
            except DistillCacheError as error:
                assert "no store.json" in str(error) and not committed, error
                continue
            ids = reader.manifest.column("sample_id").to_pylist()
            assert len(ids) == len(set(ids)) and reader.duplicates.num_rows == 0
            now = {by_id[sample_id] for sample_id in ids}
            assert committed <= now, f"committed rows missing: {sorted(committed - now)}"
            assert seen <= now, f"rows seen before are missing now: {sorted(seen - now)}"
            seen, opens = now, opens + 1
            if done:
                break
            time.sleep(0.1)  # leave the writer CPU time on a shared machine
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        compactions = 0
        for compactor in compactors:
            try:
                out, err = compactor.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                compactor.send_signal(signal.SIGKILL)
                raise
            assert compactor.returncode == 0, err
            compactions += int(out.split("COMPACTIONS ")[1].split()[0])
    assert seen == set(range(samples))
    assert_small_reads_back(StoreReader(url), range(samples))
    assert verify_store(url) == []
    return opens, compactions


@pytest.mark.slow  # real processes / moto
def test_readers_see_every_row_once_while_a_writer_and_two_compactors_run(tmp_path):
    started = time.monotonic()
    opens, compactions = read_while_others_compact(str(tmp_path / "store"), tmp_path, 24, 2)
    assert opens >= 3 and compactions >= 3, (opens, compactions, time.monotonic() - started)


@pytest.mark.slow  # ~45 s on a busy machine: moto serves from this process
def test_readers_see_every_row_once_while_a_writer_and_two_compactors_run_on_s3(s3, tmp_path):
    url = s3.new_bucket() + "/store"
    opens, compactions = read_while_others_compact(url, tmp_path, 12, 2)
    assert opens >= 3 and compactions >= 2, (opens, compactions)


@pytest.mark.slow  # real processes / moto
def test_on_s3_refresh_sees_other_processes_files_and_compaction_folds_and_removes(s3):
    """s3fs keeps directory listings; a writer's refresh must list again (a file published with another
    s3fs instance stands in for another machine's commit). Then compaction on S3, rows once."""
    url = s3.new_bucket() + "/store"
    write_small(url, range(6), batch_size=2)
    files = ManifestFiles(StoreLocation.open(url), list(SMALL_FIELDS))
    files.refresh()
    elsewhere = s3fs.S3FileSystem(skip_instance_cache=True)
    root = url.removeprefix("s3://")
    name = sorted(elsewhere.ls(f"{root}/manifest"))[-1].rsplit("/", 1)[1]
    writer, row, crc = name.removesuffix(".parquet").rsplit("-", 2)
    copied = f"{writer}x-{row}-{crc}.parquet"  # same bytes, so the same CRC-32C, under another writer's name
    elsewhere.pipe_file(f"{root}/manifest/{copied}", elsewhere.cat_file(f"{root}/manifest/{name}"))
    files.refresh()
    assert copied in files.live_names()
    elsewhere.rm_file(f"{root}/manifest/{copied}")

    report = compact_store(url, grace_seconds=0)
    assert report.folded == 3 and report.rows == 6
    assert len(compact_store(url, grace_seconds=0).removed) == 3
    assert len(elsewhere.ls(f"{root}/manifest/compacted")) == 1
    assert_small_reads_back(StoreReader(url), range(6))
