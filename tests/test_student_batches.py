"""The training batches of phase two: streamed from the store one batch ahead (memory of a few
batches, whatever the cache's size) or preloaded, with the same values in the same order."""

import threading
import time

import pytest
import torch

from shared.store import StoreReader
from student_train.batches import TrainingData, rows_for_micro_step
from tests.student_store_fixture import one_torch_thread, shared_capture, write_capture_store  # noqa: F401

FIELDS = ("trajectory", "out_cond", "out_uncond")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_capture_store(shared_capture(), tmp_path_factory.mktemp("store") / "cache")


def schedule(data: TrainingData, micro_steps: range, batch_size: int = 4) -> list[torch.Tensor]:
    return [rows_for_micro_step(len(data), batch_size, 7, m) for m in micro_steps]


def test_streamed_batches_read_only_their_rows_ahead_of_use_in_a_reader_thread(store, monkeypatch):
    reader = StoreReader(store)
    reads = []  # (thread, number of rows) per store read
    read = reader.read
    monkeypatch.setattr(
        reader,
        "read",
        lambda name, rows: reads.append((threading.current_thread().name, len(rows))) or read(name, rows),
    )
    data = TrainingData(reader, FIELDS, split="all")
    assert reads == []  # opening reads nothing: no field of the split is held in memory
    fields_per_batch = len(data.names)
    batches = data.batches(schedule(data, range(5)), "cpu")
    next(batches)
    deadline = time.monotonic() + 10  # the second batch is read while the first one is used
    while len(reads) < 2 * fields_per_batch and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(reads) == 2 * fields_per_batch
    assert all(thread.startswith("store-reader") and rows == 4 for thread, rows in reads)
    assert len(list(batches)) == 4 and len(reads) == 5 * fields_per_batch


def test_streamed_and_preloaded_batches_are_equal(store):
    streamed = TrainingData(StoreReader(store), FIELDS, split="all")
    preloaded = TrainingData(StoreReader(store), FIELDS, split="all", preload=True)
    assert set(preloaded.preloaded) == {*FIELDS, "cond.encoder_hidden_states"}
    positions = schedule(streamed, range(6))  # 6 x 4 samples of 6 rows: epoch boundaries inside batches
    for ours, theirs in zip(
        streamed.batches(positions, "cpu"), preloaded.batches(positions, "cpu"), strict=True
    ):
        assert ours.sample_ids == theirs.sample_ids
        assert ours.fields.keys() == theirs.fields.keys() == set(FIELDS)
        assert all(torch.equal(ours.fields[name], theirs.fields[name]) for name in FIELDS)
        assert torch.equal(ours.cond["encoder_hidden_states"], theirs.cond["encoder_hidden_states"])
        assert ours.fields["trajectory"].dtype == torch.float32


def test_batches_hold_the_rows_of_the_manifest(store):
    capture = shared_capture()
    data = TrainingData(StoreReader(store), FIELDS, split="all")
    positions = torch.tensor([5, 0, 3, 3])  # any order, repeats allowed
    batch = data.batch(positions, "cpu")
    assert batch.sample_ids == [capture.rows[i]["sample_id"] for i in positions.tolist()]
    assert torch.equal(batch.fields["out_cond"], capture.arrays["out_cond"][positions].float())
