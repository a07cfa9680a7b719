"""The fields a training run holds in memory: each distinct row once, chosen by `--loader auto` from
the manifest's checksums within the teacher's weight bytes, the others streamed; every batch equal to
the values written, whichever way it is made."""

import numpy as np
import pytest
import torch

from shared.store import FieldSpec, StoreReader, StoreWriter
from student_train.data.batches import TrainingData
from tests.small_store import FINGERPRINT, TEACHER, small_row

ROWS = 12
SPECS = {  # bytes per row: 12, 24, 80
    "x": FieldSpec("float16", (2, 3)),
    "noise": FieldSpec("float32", (2, 3)),
    "cond.encoder_hidden_states": FieldSpec("float32", (4, 5)),
}
# Held bytes by hand: distinct rows x row bytes + 8 bytes of index per row (12 rows).
HELD_BYTES = {"noise": 1 * 24 + 96, "x": 12 * 12 + 96, "cond.encoder_hidden_states": 3 * 80 + 96}


def arrays() -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    prompts = generator.standard_normal((3, 4, 5)).astype(np.float32)  # 3 prompts, 4 seeds each
    return {
        "x": generator.standard_normal((ROWS, 2, 3)).astype(np.float16),  # every row different
        "noise": np.zeros((ROWS, 2, 3), dtype=np.float32),  # one value for every row
        "cond.encoder_hidden_states": prompts[np.arange(ROWS) % 3],
    }


def write_store(url, teacher_nbytes: int) -> StoreReader:
    settings = {
        "num_inference_steps": 4,
        "guidance_scale": 2.0,
        "val_fraction": 0.0,
        "teacher_nbytes": teacher_nbytes,
    }
    writer = StoreWriter(str(url), fingerprint=FINGERPRINT, teacher=TEACHER, settings=settings, fields=SPECS)
    writer.commit([small_row(index) for index in range(ROWS)], arrays())
    return StoreReader(str(url))


def in_split_order(reader: StoreReader, data: TrainingData, name: str) -> np.ndarray:
    """The written values of `name` at each split position (the manifest's row order may differ)."""
    index = {small_row(i)["sample_id"]: i for i in range(ROWS)}
    return arrays()[name][[index[sample_id] for sample_id in data.sample_ids]]


def test_memory_holds_each_distinct_row_once_and_gives_the_written_values(tmp_path):
    reader = write_store(tmp_path / "store", teacher_nbytes=0)
    data = TrainingData(reader, ("x", "noise"), split="all", loader="memory")
    assert not data.streamed and data.names == ("x", "noise", "cond.encoder_hidden_states")
    assert [len(data.held[name].values) for name in data.names] == [12, 1, 3]
    assert {name: data.held[name].nbytes for name in data.names} == HELD_BYTES
    assert data.held["x"].values.dtype == torch.float16  # as stored
    positions = torch.tensor([11, 0, 5, 5, 7])
    for name, values in data.read(positions).items():
        assert np.array_equal(values.numpy(), in_split_order(reader, data, name)[positions.numpy()])


def test_distinct_rows_are_counted_from_the_checksums_without_reading(tmp_path):
    reader = write_store(tmp_path / "store", teacher_nbytes=0)
    reader.read_stored = None  # counting reads no array
    counts = {name: reader.distinct_rows(name, range(ROWS)) for name in SPECS}
    assert counts == {"x": 12, "noise": 1, "cond.encoder_hidden_states": 3}
    rows_of_one_prompt = [
        i for i, prompt in enumerate(reader.manifest.column("prompt").to_pylist()) if prompt.endswith(" 1")
    ]
    assert reader.distinct_rows("x", rows_of_one_prompt[:2]) == 2


@pytest.mark.parametrize(
    "budget, held",
    [
        (sum(HELD_BYTES.values()), ("x", "noise", "cond.encoder_hidden_states")),
        (sum(HELD_BYTES.values()) - 1, ("x", "noise")),  # the cheapest first: noise, x, then cond
        (HELD_BYTES["noise"] + HELD_BYTES["x"] - 1, ("noise",)),
        (HELD_BYTES["noise"] - 1, ()),
    ],
)
def test_auto_holds_the_cheapest_fields_within_the_teachers_weights_and_streams_the_rest(
    tmp_path, budget, held
):
    reader = write_store(tmp_path / "store", teacher_nbytes=budget)
    data = TrainingData(reader, ("x", "noise"), split="all", loader="auto")
    assert set(data.held) == set(held)
    assert data.streamed == tuple(name for name in data.names if name not in held)
    reads = []
    read = reader.read
    reader.read = lambda name, rows: reads.append(name) or read(name, rows)
    positions = torch.tensor([3, 9, 3])
    batch = data.batch(positions, "cpu")
    assert reads == list(data.streamed)  # a batch reads its streamed fields only, once each
    expected = in_split_order(reader, data, "cond.encoder_hidden_states")[positions.numpy()]
    assert np.array_equal(batch.cond["encoder_hidden_states"].numpy(), expected)
    assert np.array_equal(
        batch.fields["x"].numpy(), in_split_order(reader, data, "x")[positions.numpy()].astype(np.float32)
    )


def test_a_process_holds_only_the_positions_it_reads(tmp_path):
    reader = write_store(tmp_path / "store", teacher_nbytes=0)
    data = TrainingData(reader, ("x",), split="all", loader="memory", needed=[8, 2])
    cond = in_split_order(reader, data, "cond.encoder_hidden_states")[[8, 2]]
    assert len(data.held["x"].values) == 2
    assert len(data.held["cond.encoder_hidden_states"].values) == len(np.unique(cond, axis=0))
    values = data.read(torch.tensor([8, 2, 8]))["x"].numpy()
    assert np.array_equal(values, in_split_order(reader, data, "x")[[8, 2, 8]])
    with pytest.raises(AssertionError, match="a position outside `needed` was read"):
        data.read(torch.tensor([3]))


def test_the_runs_first_line_says_what_is_held_and_what_is_streamed(tmp_path):
    reader = write_store(tmp_path / "store", teacher_nbytes=HELD_BYTES["noise"])
    assert TrainingData(reader, ("x", "noise"), split="all", loader="auto").placement == (
        "noise in memory (0.0 MiB), x, cond.encoder_hidden_states streamed"
    )
    assert TrainingData(reader, ("x",), split="all", loader="stream").placement == "streamed"
    assert TrainingData(reader, ("x",), split="all", loader="memory").placement == "in memory: 0.0 MiB"
