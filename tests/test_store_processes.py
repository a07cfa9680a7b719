"""Writers in separate processes: killed with SIGKILL mid-batch, resumed, and two at once on one store.

    .venv/bin/python -m pytest tests/test_store_processes.py -q

Each child is `python -m tests.store_writer_process` (see there); the data of sample i depends on i
only, so every row read back can be checked exactly.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared.store import StoreReader, verify_store
from tests.store_fixtures import assert_reads_back

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # real writer processes, SIGKILL


def start_writer(url, first: int, stop: int, *options: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.store_writer_process", str(url), str(first), str(stop), *options]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out.splitlines()[-1] == "DONE"


def all_manifest_rows(store: Path) -> list[str]:
    """sample_ids over every manifest file, duplicates kept (the reader would hide them)."""
    tables = [pq.read_table(path) for path in sorted((store / "manifest").glob("*.parquet"))]
    return pa.concat_tables(tables).column("sample_id").to_pylist() if tables else []


@pytest.mark.parametrize("writer_id", [None, "rank0"])
def test_a_writer_killed_mid_batch_loses_only_that_batch_and_resume_completes(tmp_path, writer_id):
    store = tmp_path / "store"
    named = ["--writer-id", writer_id] if writer_id else []
    victim = start_writer(store, 0, 20, "--batch-size", "4", "--hang-at-commit", "3", *named)
    try:
        for line in victim.stdout:
            if line.strip() == "ARRAYS_WRITTEN":  # third batch: arrays on disk, manifest not yet
                break
        assert victim.poll() is None, f"the writer ended before its third commit: {victim.stderr.read()}"
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL

    reader = StoreReader(store)
    assert len(reader) == 8  # two whole batches, nothing of the third
    assert_reads_back(reader, range(8))
    assert verify_store(store) == []

    finish(start_writer(store, 0, 20, "--batch-size", "4", *named))
    rows = all_manifest_rows(store)
    assert len(rows) == len(set(rows)) == 20  # every row exactly once, in the manifest files themselves
    assert_reads_back(StoreReader(store), range(20))
    assert verify_store(store) == []


def test_two_writer_processes_on_one_store_write_every_row_once(tmp_path):
    store = tmp_path / "store"
    writers = [
        start_writer(store, 0, 16, "--batch-size", "3"),
        start_writer(store, 16, 32, "--batch-size", "5"),
    ]
    for process in writers:
        finish(process)
    rows = all_manifest_rows(store)
    assert len(rows) == len(set(rows)) == 32
    reader = StoreReader(store)
    assert len(reader.writers) == 2
    assert_reads_back(reader, range(32))
    assert verify_store(store) == []
