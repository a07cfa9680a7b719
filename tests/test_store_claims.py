"""Writer claims (shared/store/claims.py): a claim is the sorted list of the ids a writer computes,
written where the others read it; others' claims are the union of theirs, never one's own; an
unreadable claim counts as none; release removes one's own only.

    .venv/bin/python -m pytest tests/test_store_claims.py -q
"""

import json

from shared.store.claims import WriterClaims
from tests.far_memory import new_far_url


def test_a_claim_is_the_sorted_ids_in_the_writers_own_file(tmp_path):
    claims = WriterClaims(tmp_path / "store", "alice")
    claims.claim(["c", "a", "b"])
    assert json.loads((tmp_path / "store" / "claims" / "alice.json").read_text()) == ["a", "b", "c"]
    claims.claim(["d"])  # the next batch replaces the last
    assert json.loads((tmp_path / "store" / "claims" / "alice.json").read_text()) == ["d"]


def test_others_are_the_union_of_every_other_writers_claim():
    url = new_far_url()
    WriterClaims(url, "alice").claim(["a1", "a2"])
    WriterClaims(url, "bob").claim(["b1", "a2"])
    carol = WriterClaims(url, "carol")
    carol.claim(["c1"])
    assert carol.others() == {"a1", "a2", "b1"}
    assert WriterClaims(url, "alice").others() == {"a2", "b1", "c1"}
    assert WriterClaims(url, "dave").others() == {"a1", "a2", "b1", "c1"}


def test_nothing_claimed_in_a_new_store(tmp_path):
    assert WriterClaims(tmp_path / "store", "alice").others() == set()


def test_an_unreadable_or_odd_claim_counts_as_none_and_ids_are_strings(tmp_path):
    folder = tmp_path / "store" / "claims"
    WriterClaims(tmp_path / "store", "alice").claim(["a1"])
    (folder / "broken.json").write_bytes(b"[not json")
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    (folder / "object.json").write_text('{"b1": 1}')
    (folder / "numbers.json").write_text("[7, 8]")
    (folder / "notes.txt").write_text('["t1"]')  # not a claim file
    (folder / "linked.json").symlink_to(folder / "alice.json")  # refused: a store holds its own files
    assert WriterClaims(tmp_path / "store", "bob").others() == {"a1", "7", "8"}


def test_release_removes_only_ones_own_claim_and_never_fails(tmp_path):
    alice, bob = WriterClaims(tmp_path / "store", "alice"), WriterClaims(tmp_path / "store", "bob")
    alice.claim(["a1"])
    bob.claim(["b1"])
    alice.release()
    assert sorted(path.name for path in (tmp_path / "store" / "claims").iterdir()) == ["bob.json"]
    alice.release()  # nothing left to remove
    assert bob.others() == set() and alice.others() == {"b1"}


def test_release_of_a_claim_that_cannot_be_removed_is_no_error(tmp_path, monkeypatch):
    alice = WriterClaims(tmp_path / "store", "alice")
    alice.claim(["a1"])
    removed = []

    def refuse(path):
        removed.append(path)
        raise PermissionError(path)

    monkeypatch.setattr(alice.location.fs, "rm_file", refuse)
    alice.release()
    assert removed == [alice.location.path("claims/alice.json")]
