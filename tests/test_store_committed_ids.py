"""The resume check: which jobs a store holds already, checked many at once (shared/store/committed_ids.py).

    .venv/bin/python -m pytest tests/test_store_committed_ids.py -q

Answers are compared with a plain Python set of the same ids; the thresholds that decide when ids go
to the sorted arrays are set to 0 in some cases so that a store of a few rows takes the path a store
of 10^6 rows takes.
"""

import random

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
