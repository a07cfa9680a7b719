"""The resume check: which jobs a store holds already, checked many at once (shared/store/committed_ids.py).

    .venv/bin/python -m pytest tests/test_store_committed_ids.py -q

Answers are compared with a plain Python set of the same ids; the thresholds that decide when ids go
to the sorted arrays are set to 0 in some cases so that a store of a few rows takes the path a store
of 10^6 rows takes.
"""

import random

import numpy as np
import pyarrow as pa
import pytest

from shared.store import committed_ids as committed_module
from shared.store.committed_ids import CommittedIds
from shared.store.compaction import compact_store
from shared.store.writer import committed_sample_ids
from tests.store_fixtures import sample_row, write_samples

HOLES = [3, 11, 12, 19]


@pytest.fixture(params=["arrays, queries grouped", "arrays", "python set"])
def fold_path(request, monkeypatch):
    """'arrays, queries grouped': every id goes to the sorted arrays and queries are grouped by their
    top bits first, as at 10^6 rows; 'arrays': the same arrays, queries as given (a few ids); 'python
    set': the defaults for a few ids."""
    if request.param != "python set":
        monkeypatch.setattr(committed_module, "FOLD_TABLES_ABOVE", 0)
    if request.param == "arrays, queries grouped":
        monkeypatch.setattr(committed_module, "SORT_QUERIES_ABOVE", 0)
    return request.param


def test_resume_check_of_a_compacted_store_with_holes_gives_exactly_the_missing_jobs(tmp_path, fold_path):
    store = tmp_path / "store"
    write_samples(store, [index for index in range(24) if index not in HOLES], batch_size=5)
    compact_store(store, grace_seconds=0)
    compact_store(store, grace_seconds=0)  # one manifest file left, sorted by sample_id
    jobs = [sample_row(index)["sample_id"] for index in range(24)]
    random.Random(0).shuffle(jobs)

    committed = committed_sample_ids(store)
    done = committed.contains_many(jobs)

    pending = sorted(job for job, is_done in zip(jobs, done) if not is_done)
    assert pending == sorted(sample_row(index)["sample_id"] for index in HOLES)
    assert len(committed) == 24 - len(HOLES)
    assert [job in committed for job in jobs] == done.tolist()
    assert set(committed) == {sample_row(index)["sample_id"] for index in range(24) if index not in HOLES}


def test_a_new_store_has_nothing_committed(tmp_path):
    committed = committed_sample_ids(tmp_path / "nothing-here")
    assert len(committed) == 0
    assert committed.contains_many([sample_row(0)["sample_id"]]).tolist() == [False]


def tricky_ids() -> list[str]:
    """Ids that share their first 64 bits, ids of other forms, and ordinary ones."""
    rng = random.Random(1)
    shared_high = [f"{7:016x}{rng.getrandbits(64):016x}" for _ in range(5)]  # one high half, five ids
    ordinary = [f"{rng.getrandbits(128):032x}" for _ in range(40)]
    other_forms = [
        "a",
        "0" * 31,  # one short
        "0" * 33,  # one long
        "ABCDEF" + "0" * 26,  # upper case: another id than its lower-case spelling
        "0123456789abcdef 123456789abcdef",  # a space inside
        "é" + "0" * 31,
        "sample-7",
    ]
    return shared_high + ordinary + other_forms


def test_contains_many_agrees_with_a_python_set_on_tricky_ids(fold_path):
    ids = tricky_ids()
    committed_now, later = ids[::2], ids[1::2]
    committed = CommittedIds()
    committed.add_tables([pa.table({"sample_id": committed_now})])
    assert (len(committed._high) > 0) == (fold_path != "python set")
    queries = [*ids, "abcdef" + "0" * 26, "0" * 32, f"{7:016x}{0:016x}", ""]
    reference = set(committed_now)
    assert committed.contains_many(queries).tolist() == [query in reference for query in queries]
    assert [query in committed for query in queries] == [query in reference for query in queries]

    committed.add(later[:3])  # a commit read by a running writer
    committed.add_tables([pa.table({"sample_id": later[3:]})])
    reference |= set(later)
    assert committed.contains_many(queries).tolist() == [query in reference for query in queries]
    assert len(committed) == len(reference) and set(committed) == reference


def test_ids_added_one_commit_at_a_time_are_folded_into_the_arrays(monkeypatch):
    monkeypatch.setattr(committed_module, "FOLD_AT", 8)
    rng = random.Random(2)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(50)]
    committed = CommittedIds()
    for start in range(0, 40, 4):
        committed.add(ids[start : start + 4] + ids[:2])  # repeats are kept once
    assert len(committed._others) <= 8 < len(committed._high)
    assert committed.contains_many(ids).tolist() == [True] * 40 + [False] * 10
    assert len(committed) == 40


def halves(sample_id: str) -> tuple[int, int]:
    """The (high, low) 64-bit halves of a 32-hex-digit id, computed with Python's integers."""
    number = int(sample_id, 16)
    return number >> 64, number & (2**64 - 1)


def test_ids_decode_to_their_two_64_bit_halves_from_text_lists_and_arrow():
    rng = random.Random(3)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(6)] + ["0" * 32, "f" * 32, "0" * 16 + "f" * 16]
    expected = [halves(value) for value in ids]
    high, low = committed_module.numbers_of_list(ids)
    assert high.dtype == low.dtype == np.uint64
    assert list(zip(high.tolist(), low.tolist())) == expected
    high, low = committed_module.numbers_of_text("".join(ids), len(ids))
    assert list(zip(high.tolist(), low.tolist())) == expected
    chunked = pa.chunked_array([pa.array(ids[:4]), pa.array(ids[4:])])  # two chunks
    high, low = committed_module.numbers_of_arrow(chunked)
    assert list(zip(high.tolist(), low.tolist())) == expected
    sliced = pa.array(["x" * 32, *ids, "y"]).slice(1, len(ids))  # an array that starts at an offset
    high, low = committed_module.numbers_of_arrow(sliced)
    assert list(zip(high.tolist(), low.tolist())) == expected
    single = pa.chunked_array([pa.array(ids)])
    assert committed_module.numbers_of_arrow(single)[1].tolist() == [low for _, low in expected]
    for empty in ([], pa.array([], pa.string()), pa.chunked_array([], pa.string())):
        found = (
            committed_module.numbers_of_list if isinstance(empty, list) else committed_module.numbers_of_arrow
        )(empty)
        assert [part.tolist() for part in found] == [[], []] and all(
            part.dtype == np.uint64 for part in found
        )


@pytest.mark.parametrize(
    "ids",
    [
        ["0" * 32, "A" + "0" * 31],  # upper case
        ["0" * 32, "0" * 31],  # short
        ["0" * 32, "0" * 33],  # long
        ["0" * 31 + "\n", "0" * 32],  # a newline inside
        ["0" * 32, "g" + "0" * 31],  # not hex
        ["0" * 32, "é" + "0" * 31],  # not ascii
        ["0" * 32, " " + "0" * 31],  # a space inside
        ["0" * 32, None],
    ],
)
def test_ids_of_another_form_are_not_decoded(ids):
    assert committed_module.numbers_of_list(ids) is None
    assert committed_module.numbers_of_arrow(pa.array(ids, pa.string())) is None


def test_arrow_ids_that_are_not_strings_are_not_decoded():
    assert committed_module.numbers_of_arrow(pa.array([b"0" * 32], pa.binary())) is None
    assert committed_module.numbers_of_text("0" * 32 + " " + "0" * 31, 2) is None


def test_sorted_unique_sorts_by_high_then_low_and_keeps_each_pair_once():
    pairs = [(3, 1), (1, 9), (3, 0), (1, 9), (2, 5), (0, 7), (3, 1)]
    high = np.asarray([pair[0] for pair in pairs], dtype=np.uint64)
    low = np.asarray([pair[1] for pair in pairs], dtype=np.uint64)
    out_high, out_low = committed_module.sorted_unique(high, low)
    assert list(zip(out_high.tolist(), out_low.tolist())) == sorted(set(pairs))
    already = sorted(set(pairs))
    out_high, out_low = committed_module.sorted_unique(
        np.asarray([pair[0] for pair in already], np.uint64),
        np.asarray([pair[1] for pair in already], np.uint64),
    )
    assert list(zip(out_high.tolist(), out_low.tolist())) == already
    one = committed_module.sorted_unique(np.asarray([5], np.uint64), np.asarray([6], np.uint64))
    assert [part.tolist() for part in one] == [[5], [6]]


def test_table_ids_go_to_the_arrays_only_above_the_threshold(monkeypatch):
    monkeypatch.setattr(committed_module, "FOLD_TABLES_ABOVE", 3)
    ids = [f"{index:032x}" for index in range(7)]
    few, many = CommittedIds(), CommittedIds()
    few.add_tables([pa.table({"sample_id": ids[:3]})])
    many.add_tables([pa.table({"sample_id": ids[:2]}), pa.table({"sample_id": ids[2:4]})])
    assert (len(few._high), len(few._others)) == (0, 3)
    assert (len(many._high), len(many._others)) == (4, 0)
    many.add_tables([pa.table({"sample_id": pa.array([], pa.string())})])
    assert len(many) == 4 and set(many) == set(ids[:4])


def test_the_set_is_folded_into_the_arrays_only_past_fold_at(monkeypatch):
    monkeypatch.setattr(committed_module, "FOLD_AT", 3)
    ids = [f"{index:032x}" for index in range(5)]
    committed = CommittedIds()
    committed.add(ids[:3])
    assert (len(committed._high), len(committed._others)) == (0, 3)
    committed.add(ids[3:4])
    assert (len(committed._high), len(committed._others)) == (4, 0)
    committed.add(ids[:2] + ["other-form"])  # ids in the arrays already are not added again
    assert committed._others == {"other-form"} and len(committed) == 5


def test_membership_of_non_strings_and_iteration_spell_ids_back():
    committed = CommittedIds()
    ids = ["0" * 31 + "1", "00000000000000ff" + "0" * 16, "sample-7"]
    committed.add_tables([pa.table({"sample_id": ids * 2000})])  # folded: above FOLD_TABLES_ABOVE
    assert len(committed) == 3 and sorted(committed) == sorted(ids)
    assert 7 not in committed and None not in committed and b"0" * 32 not in committed
    assert ("0" * 32) not in committed and ids[0] in committed and "sample-7" in committed
    assert committed.contains_many([]).tolist() == []
    assert CommittedIds().contains_many(ids).tolist() == [False, False, False]


def test_two_pairs_are_sorted_and_deduplicated_too():
    for pairs in ([(2, 0), (1, 5)], [(1, 5), (1, 5)], [(1, 6), (1, 5)]):
        high = np.asarray([pair[0] for pair in pairs], np.uint64)
        low = np.asarray([pair[1] for pair in pairs], np.uint64)
        out_high, out_low = committed_module.sorted_unique(high, low)
        assert list(zip(out_high.tolist(), out_low.tolist())) == sorted(set(pairs))


def test_queries_beyond_every_committed_id_and_ids_sharing_a_half(fold_path):
    committed_ids = [
        "0000000000000002" + "0" * 16,
        "00000000000000ff" + "0" * 15 + "1",
        "00000000000000ff" + "0" * 15 + "3",  # shares its high half with the one before
    ]
    queries = [
        "0000000000000001" + "0" * 16,  # another high half, the same low half as a committed id
        "0000000000000003" + "0" * 16,
        "00000000000000ff" + "0" * 15 + "2",  # a committed high half, a low half between theirs
        "00000000000000ff" + "0" * 15 + "4",  # ... beyond theirs: beyond every committed id
        "f" * 32,  # beyond every committed id
        *committed_ids,
    ]
    committed = CommittedIds()
    committed.add_tables([pa.table({"sample_id": committed_ids})])
    expected = [query in set(committed_ids) for query in queries]
    assert expected == [False] * 5 + [True] * 3
    assert committed.contains_many(queries).tolist() == expected
    assert [query in committed for query in queries] == expected
