"""example_batches (shared/store/batches.py): batch sizes, the leftover carried across blocks, drop_last,
which steps may be drawn for given offsets (worked out by hand), reads one block ahead, bad arguments
refused. Values are compared with what each sample was written as (tests/store_fixtures.py).

    .venv/bin/python -m pytest tests/test_store_example_batches.py -q
"""

import threading

import numpy as np
import pytest
import torch

from shared.errors import DistillCacheError
from shared.store import StoreReader, example_batches
from shared.store.batches import valid_steps
from tests.small_store import write_small
from tests.store_fixtures import expected_arrays, index_by_sample_id, write_samples


@pytest.fixture(scope="session")
def reader(tmp_path_factory):
    url = tmp_path_factory.mktemp("store") / "store"
    write_samples(url, range(7), batch_size=4)  # trajectory (6, ...), out_cond (5, ...)
    return StoreReader(url)


def all_batches(reader, rows=None, **options) -> list[dict]:
    options.setdefault("step_fields", {"trajectory": (0,)})
    options.setdefault("generator", torch.Generator().manual_seed(3))
    return list(example_batches(reader, reader.indices() if rows is None else rows, **options))


def assert_values_right(reader, batch, step_fields, sample_fields=()):
    by_id = index_by_sample_id(range(7))
    for k, (row, step) in enumerate(zip(batch["row"].tolist(), batch["step"].tolist())):
        expected = expected_arrays(by_id[reader.manifest.column("sample_id")[row].as_py()])
        for name, offsets in step_fields.items():
            assert torch.equal(batch[name][k], expected[name][[step + offset for offset in offsets]])
        for name in sample_fields:
            assert torch.equal(batch[name][k], expected[name])


@pytest.mark.parametrize("batch_size, block_rows", [(5, 2), (4, 3), (30, 7), (42, 64), (1, 1)])
def test_every_batch_is_full_but_the_last_and_every_pair_comes_once(reader, batch_size, block_rows):
    step_fields = {"trajectory": (0, 1)}  # 6 steps, offset 1: steps 0..4, 35 pairs
    batches = all_batches(
        reader,
        batch_size=batch_size,
        block_rows=block_rows,
        step_fields=step_fields,
        sample_fields=("token_count", "cond.encoder_hidden_states"),
    )
    sizes = [len(batch["row"]) for batch in batches]
    full, last = divmod(35, batch_size)
    assert sizes == [batch_size] * full + ([last] if last else [])
    pairs = [pair for batch in batches for pair in zip(batch["row"].tolist(), batch["step"].tolist())]
    assert sorted(pairs) == [(row, step) for row in range(7) for step in range(5)]
    for batch in batches:
        assert set(batch) == {"row", "step", "trajectory", "token_count", "cond.encoder_hidden_states"}
        assert batch["trajectory"].dtype == torch.float16 and batch["token_count"].dtype == torch.int64
        assert batch["cond.encoder_hidden_states"].dtype == torch.bfloat16  # restored from its stored bits
        assert batch["row"].dtype == batch["step"].dtype == torch.int64
        assert_values_right(reader, batch, step_fields, ("token_count", "cond.encoder_hidden_states"))


@pytest.mark.parametrize("batch_size, block_rows", [(5, 2), (4, 3), (7, 7)])
def test_drop_last_drops_only_the_short_last_batch(reader, batch_size, block_rows):
    kept = all_batches(reader, batch_size=batch_size, block_rows=block_rows, drop_last=True)
    everything = all_batches(reader, batch_size=batch_size, block_rows=block_rows)
    assert all(len(batch["row"]) == batch_size for batch in kept)
    assert len(kept) == 42 // batch_size  # 7 rows x 6 steps
    for ours, theirs in zip(kept, everything):
        assert torch.equal(ours["row"], theirs["row"]) and torch.equal(ours["step"], theirs["step"])


def test_the_same_generator_seed_gives_the_same_batches_and_another_seed_others(reader):
    def drawn(seed):
        batches = all_batches(
            reader, batch_size=6, block_rows=3, generator=torch.Generator().manual_seed(seed)
        )
        return [(batch["row"].tolist(), batch["step"].tolist()) for batch in batches]

    assert drawn(1) == drawn(1)
    assert drawn(1) != drawn(2)


def test_a_block_holds_the_rows_it_was_cut_from_in_sorted_order(reader, monkeypatch):
    reads = []
    read_stored = reader.read_stored
    monkeypatch.setattr(
        reader, "read_stored", lambda name, rows: reads.append(rows.tolist()) or read_stored(name, rows)
    )
    all_batches(reader, rows=[6, 1, 4, 0, 2], batch_size=4, block_rows=2)
    assert all(block == sorted(block) for block in reads)
    assert sorted(row for block in reads for row in block) == [0, 1, 2, 4, 6]
    assert [len(block) for block in reads] == [2, 2, 1]


def test_the_next_block_is_read_in_another_thread_while_this_one_is_cut(reader, monkeypatch):
    reads = []
    read_stored = reader.read_stored

    def recorded(name, rows):
        reads.append(threading.current_thread() is threading.main_thread())
        return read_stored(name, rows)

    monkeypatch.setattr(reader, "read_stored", recorded)
    batches = example_batches(
        reader,
        reader.indices(),
        batch_size=1,
        block_rows=2,
        step_fields={"trajectory": (0,)},
        generator=torch.Generator().manual_seed(0),
    )
    next(batches)
    assert reads and not any(reads)  # no read on the main thread
    assert len(reads) <= 2  # this block and at most the next one: 4 blocks in all
    assert len(list(batches)) == 41 and len(reads) == 4


def test_no_rows_give_no_batch(reader):
    assert all_batches(reader, rows=[], batch_size=4) == []


@pytest.mark.parametrize(
    "step_fields, steps, allowed",
    [
        ({"trajectory": (0,)}, None, [0, 1, 2, 3, 4, 5]),
        ({"trajectory": (0, 2)}, None, [0, 1, 2, 3]),
        ({"trajectory": (-1, 0)}, None, [1, 2, 3, 4, 5]),
        ({"trajectory": (-2, 1)}, None, [2, 3, 4]),
        ({"trajectory": (0,), "out_cond": (0,)}, None, [0, 1, 2, 3, 4]),  # out_cond has 5 steps
        ({"trajectory": (0, 1), "out_cond": (-1,)}, None, [1, 2, 3, 4]),
        ({"trajectory": (0, 2)}, [3, 0, 3], [3, 0, 3]),
    ],
)
def test_the_steps_drawn_are_those_every_offset_fits(reader, step_fields, steps, allowed):
    assert valid_steps(reader, step_fields, steps).tolist() == allowed
    batches = all_batches(reader, batch_size=100, step_fields=step_fields, steps=steps)
    drawn = sorted(step for batch in batches for step in batch["step"].tolist())
    assert drawn == sorted(allowed * 7)
    for batch in batches:
        assert_values_right(reader, batch, step_fields)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 0}, "^batch_size and block_rows must be positive$"),
        ({"batch_size": 4, "block_rows": 0}, "^batch_size and block_rows must be positive$"),
        ({"batch_size": 4, "block_rows": -1}, "^batch_size and block_rows must be positive$"),
        (
            {"batch_size": 4, "step_fields": {}},
            r"^example_batches needs at least one per-step field, e\.g\. \{'trajectory': \(0,\)\}$",
        ),
        (
            {"batch_size": 4, "step_fields": {"token_count": (0,)}},
            r"^'token_count' is not a per-step field of this store \(or has no offsets\)$",
        ),
        (
            {"batch_size": 4, "step_fields": {"features.x": (0,)}},
            r"^'features.x' is not a per-step field of this store \(or has no offsets\)$",
        ),
        (
            {"batch_size": 4, "step_fields": {"trajectory": ()}},
            r"^'trajectory' is not a per-step field of this store \(or has no offsets\)$",
        ),
        (
            {"batch_size": 4, "steps": [5], "step_fields": {"trajectory": (0, 1)}},
            r"steps must lie in \[0, 5\)",
        ),
        ({"batch_size": 4, "steps": [-1]}, r"^steps must lie in \[0, 6\) for these fields and offsets$"),
        (
            {"batch_size": 4, "step_fields": {"trajectory": (0, 6)}},
            "^no step has every requested offset inside its field$",
        ),
        (
            {"batch_size": 4, "step_fields": {"trajectory": (-3, 3)}},
            "^no step has every requested offset inside its field$",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_read(reader, monkeypatch, options, message):
    monkeypatch.setattr(
        reader, "read_stored", lambda *args: pytest.fail("read before the arguments were checked")
    )
    with pytest.raises(DistillCacheError, match=message):
        all_batches(reader, **options)


def test_rows_and_steps_may_be_any_sequence_of_integers(reader):
    for rows in ([1, 3], np.asarray([1, 3], dtype=np.int32), torch.tensor([1, 3], dtype=torch.int16)):
        for steps in ([4, 2], np.asarray([4, 2], dtype=np.uint8), torch.tensor([4, 2], dtype=torch.int32)):
            (batch,) = all_batches(reader, rows=rows, steps=steps, batch_size=100)
            assert sorted(zip(batch["row"].tolist(), batch["step"].tolist())) == [
                (1, 2),
                (1, 4),
                (3, 2),
                (3, 4),
            ]
            assert batch["row"].dtype == batch["step"].dtype == torch.int64


def test_blocks_are_64_rows_unless_told_otherwise(tmp_path, monkeypatch):
    write_small(tmp_path / "store", range(70), batch_size=70)
    reader = StoreReader(tmp_path / "store")
    reads = []
    read_stored = reader.read_stored
    monkeypatch.setattr(
        reader, "read_stored", lambda name, rows: reads.append(len(rows)) or read_stored(name, rows)
    )
    batches = list(example_batches(reader, reader.indices(), batch_size=50, step_fields={"latents": (0,)}))
    assert reads == [64, 6]
    assert sum(len(batch["row"]) for batch in batches) == 70 * 3


def test_a_bfloat16_per_step_field_comes_back_as_bfloat16(reader):
    step_fields = {"cond.encoder_hidden_states": (0, 2)}  # 7 rows of 32: steps 0..4 have both offsets
    batches = all_batches(reader, batch_size=100, step_fields=step_fields)
    assert sum(len(batch["row"]) for batch in batches) == 7 * 5
    for batch in batches:
        assert batch["cond.encoder_hidden_states"].dtype == torch.bfloat16
        assert_values_right(reader, batch, step_fields)
