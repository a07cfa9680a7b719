"""`teacher-cache copy` and `merge`: committed rows only, checked as they are read, resumable after a
SIGKILL, never over another store; a merge keeps each sample once, and a reader of the destination
sees every row once while the merge runs in another process.

    .venv/bin/python -m pytest tests/test_store_copy.py -q
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import tests.far_memory  # noqa: F401  (registers farmem://)
from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter, verify_store
from shared.store.copy import copy_stores
from teacher_cache.cli import main
from tests.small_store import (
    FIELDS,
    SETTINGS,
    TEACHER,
    assert_small_reads_back,
    small_arrays,
    small_ids,
    small_row,
    small_writer,
    write_small,
)
from tests.store_fixtures import FIELDS as STORE_FIELDS
from tests.store_fixtures import FINGERPRINT, assert_reads_back, batch_for, write_samples
from tests.store_fixtures import SETTINGS as STORE_SETTINGS
from tests.store_fixtures import TEACHER as STORE_TEACHER
from tests.test_store_processes import REPO

BATCH = ["--batch-mb", str(200 / 2**20)]  # a couple of small rows per commit


def manifest_rows(store: Path) -> int:
    """Rows over every manifest file of a local store, read with pyarrow alone."""
    return sum(pq.read_table(path).num_rows for path in (store / "manifest").rglob("*.parquet"))


def test_a_copy_holds_exactly_the_committed_rows_and_the_same_description(tmp_path, capsys):
    source = tmp_path / "source"
    write_samples(source, range(10), batch_size=3)  # every dtype, bfloat16 included
    racing = StoreWriter(
        source, fingerprint=FINGERPRINT, teacher=STORE_TEACHER, settings=STORE_SETTINGS, fields=STORE_FIELDS
    )
    racing.commit(*batch_for([2, 11]))  # 2 again: a racing duplicate, not copied
    (source / "groups" / "w-orphan").mkdir()  # what a killed writer leaves: not copied either
    destination = tmp_path / "copy"
    assert main(["copy", str(source), str(destination)]) == 0
    captured = capsys.readouterr()
    assert "11 rows copied" in captured.out and "B/s" in captured.err  # the progress bar's rate
    original, copied = StoreReader(source), StoreReader(destination)
    assert copied.duplicates.num_rows == 0 and manifest_rows(destination) == 11
    assert copied.manifest.column_names == original.manifest.column_names
    keep = [name for name in original.manifest.column_names if name not in ("writer", "row")]
    assert copied.manifest.select(keep).equals(original.manifest.select(keep))
    for attribute in ("fingerprint", "teacher", "settings", "fields"):
        assert getattr(copied, attribute) == getattr(original, attribute)
    assert_reads_back(copied, [*range(10), 11])
    assert not (destination / "groups" / "w-orphan").exists()
    assert verify_store(destination) == []


def test_a_damaged_row_stops_the_copy_with_one_line(tmp_path, capsys):
    source = tmp_path / "source"
    write_small(source, range(8), batch_size=4)
    shard = next(
        path
        for path in sorted((source / "groups").rglob("*"))
        if path.is_file() and "/latents/c/" in path.as_posix()
    )
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["copy", str(source), str(tmp_path / "copy"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and ("does not match its checksum" in error or "cannot be decoded" in error)


def test_copy_refuses_to_write_over_another_store_or_other_files(tmp_path, capsys):
    source = tmp_path / "source"
    write_small(source, range(4))
    other = tmp_path / "other"
    write_small(other, range(10, 12))  # same teacher and settings, samples the source lacks
    before = sorted(path.relative_to(other) for path in other.rglob("*"))
    assert main(["copy", str(source), str(other), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "another store" in error and str(other) in error  # the destination named
    assert sorted(path.relative_to(other) for path in other.rglob("*")) == before

    foreign = tmp_path / "foreign"
    write_samples(foreign, range(2))  # another teacher and fields
    assert main(["copy", str(source), str(foreign), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(
        f"teacher-cache: error: {foreign} was made with another teacher"
    )

    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("m")  # one byte is a file too
    assert main(["copy", str(source), str(cluttered), "--no-progress"]) == 2
    assert "holds files but no store" in capsys.readouterr().err
    assert [path.name for path in cluttered.iterdir()] == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a new place
    assert main(["copy", str(source), str(empty), "--no-progress"]) == 0
    assert_small_reads_back(StoreReader(empty), range(4))

    assert main(["copy", str(source), str(source), "--no-progress"]) == 2
    assert "the destination itself" in capsys.readouterr().err


@pytest.mark.slow  # real processes / moto
def test_a_copy_killed_mid_way_resumes_and_commits_every_row_once(tmp_path):
    source = tmp_path / "source"
    write_small(source, range(40), batch_size=8)
    destination = tmp_path / "copy"
    command = [
        sys.executable,
        "-m",
        "teacher_cache",
        "copy",
        str(source),
        str(destination),
        *BATCH,
        "--no-progress",
    ]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while manifest_count(destination) < 3 and first.poll() is None:  # a few commits, then SIGKILL
        assert time.monotonic() < deadline, "the copy committed nothing in 120 s"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the copy finished before it could be killed"
    partial = len(StoreReader(destination))
    assert 0 < partial < 40
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{40 - partial} rows copied" in resumed.stdout and f"{partial} there already" in resumed.stdout
    copied = StoreReader(destination)
    assert copied.duplicates.num_rows == 0
    assert_small_reads_back(copied, range(40))
    assert verify_store(destination) == []


def manifest_count(store: Path) -> int:
    folder = store / "manifest"
    return len(list(folder.glob("*.parquet"))) if folder.is_dir() else 0


def test_merge_keeps_each_sample_once_and_counts_the_ones_that_differ(tmp_path, capsys):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    write_small(alice, range(0, 12), batch_size=5)
    write_small(bob, range(8, 20), batch_size=5)  # 8..11 in both, equal
    writer = small_writer(bob)  # and 20, captured by both with other values (not bit-reproducible)
    write_small(alice, [20])
    changed = {name: np.stack([small_arrays(20)[name]]) for name in FIELDS}
    changed["latents"] = changed["latents"] + np.float16(1)
    writer.commit([small_row(20)], changed)
    merged = tmp_path / "team"
    assert main(["merge", str(alice), str(bob), "--out", str(merged), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "21 rows copied" in out and "5 samples were in more than one source" in out
    assert "1 of them with other values" in out
    reader = StoreReader(merged)
    assert_small_reads_back(reader, range(21))  # sample 20 as alice (the first store) has it
    assert verify_store(merged) == []
    assert main(["merge", str(alice), str(bob), "--out", str(merged), "--no-progress"]) == 0
    assert "0 rows copied" in capsys.readouterr().out  # a second run: nothing left to do


def test_merge_refuses_stores_of_other_settings_before_writing(tmp_path, capsys):
    alice, carol = tmp_path / "alice", tmp_path / "carol"
    write_small(alice, range(4))
    StoreWriter(
        carol, fingerprint=small_writer(alice).metadata.fingerprint, teacher=TEACHER,
        settings={**SETTINGS, "num_inference_steps": 8}, fields=FIELDS,
    ).commit([small_row(30)], {name: np.stack([small_arrays(30)[name]]) for name in FIELDS})  # fmt: skip
    merged = tmp_path / "team"
    assert main(["merge", str(alice), str(carol), "--out", str(merged), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "cannot be combined" in error and "settings.num_inference_steps" in error
    assert not merged.exists()


@pytest.mark.slow  # real processes / moto
def test_copy_between_disk_and_s3_and_back(s3, tmp_path):
    source = tmp_path / "source"
    write_small(source, range(9), batch_size=4)
    remote = s3.new_bucket() + "/cache"
    report = copy_stores([str(source)], remote, batch_bytes=1200, progress=False)
    assert report.copied == 9
    back = tmp_path / "back"
    copy_stores([remote], str(back), progress=False)
    assert_small_reads_back(StoreReader(remote), range(9))
    assert_small_reads_back(StoreReader(back), range(9))
    with pytest.raises(DistillCacheError, match="the destination itself"):
        copy_stores([remote], remote)


@pytest.mark.slow  # real processes / moto
def test_a_reader_of_the_merged_store_sees_each_row_once_while_the_merge_runs(tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    write_small(alice, range(0, 30), batch_size=10)
    write_small(bob, range(20, 50), batch_size=10)
    merged = tmp_path / "team"
    command = [sys.executable, "-m", "teacher_cache", "merge", str(alice), str(bob), "--out", str(merged)]
    merge = subprocess.Popen(
        [*command, *BATCH, "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    by_id = small_ids(range(50))
    seen, opens = set(), 0
    while True:
        done = merge.poll() is not None
        if (merged / "store.json").exists():
            ids = StoreReader(merged).manifest.column("sample_id").to_pylist()
            assert len(ids) == len(set(ids)) and set(ids) <= set(by_id)
            now = set(ids)
            assert seen <= now, "a row seen before is gone"
            seen, opens = now, opens + 1
        if done:
            break
        time.sleep(0.05)
    out, err = merge.communicate()
    assert merge.returncode == 0, err
    assert opens >= 3 and seen == set(by_id)
    assert_small_reads_back(StoreReader(merged), range(50))


def test_copy_reports_what_it_did_and_leaves_one_manifest_file(tmp_path):
    from shared.store.copy import MAX_BATCH_ROWS, batches, plan_copy
    from shared.store.manifest import ManifestFiles
    from shared.store.paths import StoreLocation

    alice, bob = tmp_path / "alice", tmp_path / "bob"
    write_small(alice, range(0, 6), batch_size=2)
    write_small(bob, range(4, 9), batch_size=2)  # 4 and 5 in both, with the same values
    destination = tmp_path / "team"
    write_small(destination, range(0, 3))  # an earlier, killed merge of these stores
    plan = plan_copy([str(alice), str(bob)], str(destination))
    row_bytes = 3 * 4 * 4 * 2 + 4  # latents float16 (3, 4, 4) and one int32 label
    assert (plan.rows, plan.row_bytes, plan.already, plan.repeated, plan.differing) == (6, row_bytes, 3, 2, 0)
    assert [index for index, _ in plan.todo] == [0, 1]
    for index, rows in plan.todo:  # each source's rows in the order they are stored
        assert plan.readers[index].in_storage_order(rows).tolist() == rows.tolist()

    sizes = [
        (reader is plan.readers[0], len(rows)) for reader, rows in batches(plan, batch_bytes=2 * row_bytes)
    ]
    assert sizes == [(True, 2), (True, 1), (False, 2), (False, 1)]  # never two sources in one batch
    assert [len(rows) for _, rows in batches(plan, batch_bytes=row_bytes - 1)] == [1] * 6  # at least a row
    assert [len(rows) for _, rows in batches(plan, batch_bytes=10**12)] == [3, 3]
    assert MAX_BATCH_ROWS == 16384

    report = copy_stores([str(alice), str(bob)], str(destination), batch_bytes=2 * row_bytes, progress=False)
    assert (report.copied, report.bytes, report.already, report.repeated, report.differing) == (
        6,
        6 * row_bytes,
        3,
        2,
        0,
    )
    assert report.seconds > 0
    files = ManifestFiles(StoreLocation.open(destination), list(FIELDS))
    files.refresh()
    assert [name.split("/")[0] for name in files.live_names()] == ["compacted"]  # compacted at the end
    assert_small_reads_back(StoreReader(destination), range(9))
    again = copy_stores([str(alice), str(bob)], str(destination), progress=False)
    assert (again.copied, again.bytes, again.already) == (0, 0, 9)


def test_a_batch_read_for_a_commit_holds_the_rows_metadata_and_every_field(tmp_path):
    from shared.store.copy import read_batch

    write_samples(tmp_path / "source", range(5), batch_size=3)
    reader = StoreReader(tmp_path / "source")
    rows = np.asarray([4, 1, 2])
    metadata, arrays = read_batch(reader, rows)
    columns = [name for name in reader.manifest.column_names if name not in ("split", "writer", "row")]
    columns = [name for name in columns if not name.startswith("checksum_")]
    assert metadata == [{name: reader.manifest.column(name)[row].as_py() for name in columns} for row in rows]
    assert set(arrays) == set(STORE_FIELDS)
    for name, spec in STORE_FIELDS.items():
        expected = reader.read(name, rows)
        if spec.dtype == "bfloat16":  # no numpy dtype: the tensor
            assert torch.equal(arrays[name], expected)
        else:  # the stored values as they are
            assert isinstance(arrays[name], np.ndarray) and np.array_equal(arrays[name], expected.numpy())


def test_the_same_store_is_recognised_however_it_is_spelled(tmp_path):
    from shared.store.copy import same_place
    from shared.store.paths import StoreLocation

    (tmp_path / "store").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "store")
    local = StoreLocation.open(tmp_path / "store")
    assert same_place(local, StoreLocation.open(tmp_path / "alias"))
    assert same_place(local, StoreLocation.open(f"{tmp_path}/store/"))
    assert not same_place(local, StoreLocation.open(tmp_path / "other"))
    assert same_place(StoreLocation.open("memory://a/store"), StoreLocation.open("memory://a/store/"))
    assert not same_place(StoreLocation.open("memory://a/store"), StoreLocation.open("memory://a/other"))
    assert not same_place(StoreLocation.open("memory://a/store"), StoreLocation.open("farmem://a/store"))
    assert not same_place(StoreLocation.open("memory:///store"), StoreLocation.open("/store"))


def test_sources_are_refused_before_anything_is_written(tmp_path):
    from shared.store.copy import plan_copy

    write_small(tmp_path / "alice", range(2))
    destination = str(tmp_path / "team")
    with pytest.raises(DistillCacheError, match="^give at least one store to copy from$"):
        plan_copy([], destination)
    with pytest.raises(DistillCacheError) as error:
        plan_copy([str(tmp_path / "alice"), f"{tmp_path}/alice/"], destination)
    assert str(error.value) == f"{tmp_path}/alice/ is given twice; give each store once"
    with pytest.raises(DistillCacheError) as error:
        plan_copy([str(tmp_path / "alice")], str(tmp_path / "alice"))
    assert str(error.value) == f"{tmp_path / 'alice'} is the destination itself; choose another destination"
    StoreWriter(
        tmp_path / "carol",
        fingerprint={**small_writer(tmp_path / "alice").metadata.fingerprint, "weights_hash": "9" * 64},
        teacher=TEACHER,
        settings={**SETTINGS, "num_inference_steps": 8, "guidance_scale": 1.0, "val_fraction": 0.5},
        fields=FIELDS,
    ).commit([small_row(30)], {name: np.stack([small_arrays(30)[name]]) for name in FIELDS})
    with pytest.raises(DistillCacheError) as error:
        plan_copy([str(tmp_path / "alice"), str(tmp_path / "carol")], destination)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'carol'} cannot be combined with {tmp_path / 'alice'}: ")
    assert message.count("; ") == 3 and " ...; only stores of one teacher (same weights digest)" in message
    assert not (tmp_path / "team").exists()
