"""The training batches of phase two: streamed from the store one batch ahead (memory of a few
batches, whatever the cache's size) or held in memory, with the same values in the same order."""

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from shared.errors import DistillCacheError
from shared.store import StoreReader
from student_train.data.batches import TrainingData, rows_for_micro_step
from tests.student_store_fixture import one_torch_thread, shared_capture, write_capture_store  # noqa: F401

FIELDS = ("trajectory", "out_cond", "out_uncond")


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
    data = TrainingData(reader, FIELDS, split="all", loader="stream")
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
    streamed = TrainingData(StoreReader(store), FIELDS, split="all", loader="stream")
    preloaded = TrainingData(StoreReader(store), FIELDS, split="all", loader="memory")
    assert set(preloaded.held) == {*FIELDS, "cond.encoder_hidden_states"} and not preloaded.streamed
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
    data = TrainingData(StoreReader(store), FIELDS, split="all", loader="stream")
    positions = torch.tensor([5, 0, 3, 3])  # any order, repeats allowed
    batch = data.batch(positions, "cpu")
    assert batch.sample_ids == [capture.rows[i]["sample_id"] for i in positions.tolist()]
    assert torch.equal(batch.fields["out_cond"], capture.arrays["out_cond"][positions].float())


def test_auto_loader_holds_a_split_that_fits_in_the_teachers_weights_and_streams_a_bigger_one(tmp_path):
    """auto: every field held while their bytes held (distinct rows x row bytes + an int64 index per
    row, computed here from the capture's arrays) fit in the teacher's weights (settings teacher_nbytes,
    what a run with the teacher in its loop holds); a byte less and a field is streamed."""
    capture = shared_capture()
    names = (*FIELDS, "cond.encoder_hidden_states")
    rows = len(capture.rows)
    held_bytes = sum(
        len(np.unique(capture.arrays[name].numpy().reshape(rows, -1), axis=0))
        * capture.arrays[name][0].numel()
        * 4  # float32 as written
        + 8 * rows
        for name in names
    )
    for budget, in_memory in ((held_bytes, True), (held_bytes - 1, False)):
        reader = StoreReader(store_with(capture, tmp_path / f"budget{budget}", budget))
        data = TrainingData(reader, FIELDS, split="all", loader="auto")
        assert (not data.streamed) is in_memory and len(data.held) == len(names) - (not in_memory)
    assert not TrainingData(reader, FIELDS, split="all", loader="memory").streamed
    assert not TrainingData(reader, FIELDS, split="all", loader="stream").held
    with pytest.raises(DistillCacheError, match="unknown --loader 'ram'; valid: auto, memory, stream"):
        TrainingData(reader, FIELDS, split="all", loader="ram")


def store_with(capture, url, teacher_nbytes: int) -> str:
    settings = {**capture.settings, "teacher_nbytes": teacher_nbytes}
    return write_capture_store(dataclasses.replace(capture, settings=settings), url)
