"""The order in which a writer touches the store, seen by a store that records every write: a commit's
arrays are all written before its manifest file is published, and a commit after a failed one starts
on a fresh shard (never rewriting a file of the failed commit).

    .venv/bin/python -m pytest tests/test_store_write_order.py -q
"""

import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter
from shared.store.confined import ConfinedLocalStore
from shared.store.paths import StoreLocation
from tests.store_fixtures import FIELDS, assert_reads_back, batch_for, write_samples


@pytest.fixture
def write_log(monkeypatch) -> list[tuple[str, str]]:
    """[("array", zarr key) | ("file", manifest or store.json path), ...] in the order written."""
    log: list[tuple[str, str]] = []

    class RecordingStore(ConfinedLocalStore):
        async def _set(self, key, value, exclusive=False):
            log.append(("array", key))
            await super()._set(key, value, exclusive=exclusive)

    write_atomic = StoreLocation.write_atomic

    def recorded_write_atomic(self, relative, data):
        log.append(("file", relative))
        write_atomic(self, relative, data)

    monkeypatch.setattr(
        StoreLocation, "zarr_store", lambda self, read_only: RecordingStore(self.root, read_only=read_only)
    )
    monkeypatch.setattr(StoreLocation, "write_atomic", recorded_write_atomic)
    return log


def shard_keys(writer: str, shard: int) -> set[str]:
    """The shard file of row-shard `shard` of every field (shards span the whole per-sample shape)."""
    return {
        "/".join(["groups", writer, name, "c", str(shard), *["0"] * len(spec.shape)])
        for name, spec in FIELDS.items()
    }


def test_every_array_of_a_commit_is_written_before_its_manifest(tmp_path, write_log):
    writer = write_samples(
        tmp_path / "store", range(6), batch_size=2, writer_id="rank0"
    )  # 3 commits, shard = 2 rows
    manifests = [
        index
        for index, (kind, path) in enumerate(write_log)
        if path.startswith("manifest/") and "parquet" in path
    ]
    assert len(manifests) == 3
    start = 0
    for commit, published in enumerate(manifests):
        written = {key for kind, key in write_log[start:published] if kind == "array"}
        assert shard_keys(writer.writer_id, commit) <= written, f"commit {commit} published before its shards"
        start = published + 1
    assert write_log[-1][1].startswith(
        "manifest/rank0-000000000004-"
    )  # nothing is written after the last commit point


def test_after_a_failed_commit_the_next_one_starts_on_a_fresh_shard(tmp_path, write_log, monkeypatch):
    writer = write_samples(tmp_path / "store", range(2), batch_size=2, writer_id="rank0")  # shard 0
    publish = StoreWriter._publish_manifest
    with monkeypatch.context() as patch:
        patch.setattr(StoreWriter, "_publish_manifest", lambda *args: (_ for _ in ()).throw(OSError("lost")))
        with pytest.raises(DistillCacheError, match="lost"):
            writer.commit(*batch_for([2, 3]))  # arrays written to shard 1, never published
    assert StoreWriter._publish_manifest is publish
    failed = {key for kind, key in write_log if kind == "array" and "/c/" in key} - shard_keys("rank0", 0)
    assert failed == shard_keys("rank0", 1)
    write_log.clear()
    writer.commit(*batch_for([4, 5]))
    rewritten = {key for kind, key in write_log if kind == "array" and "/c/" in key}
    assert rewritten == shard_keys("rank0", 2)  # not the failed commit's shard 1
    reader = StoreReader(tmp_path / "store")
    assert sorted(reader.manifest.column("row").to_pylist()) == [0, 1, 4, 5]
    assert_reads_back(reader, [0, 1, 4, 5])
