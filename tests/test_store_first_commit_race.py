"""Two writers made for a store that does not exist yet: the first to commit creates store.json; the
other, made with other settings, is refused at its own first commit, before it writes anything, and
one made with the same settings appends beside it.

    .venv/bin/python -m pytest tests/test_store_first_commit_race.py -q
"""

import json
import re

import numpy as np
import pytest

from shared.errors import DistillCacheError
from shared.store import StoreReader, StoreWriter
from tests.small_store import (
    FIELDS,
    FINGERPRINT,
    SETTINGS,
    TEACHER,
    assert_small_reads_back,
    small_arrays,
    small_row,
)


def writer_with(url, settings: dict, writer_id: str) -> StoreWriter:
    return StoreWriter(
        url, fingerprint=FINGERPRINT, teacher=TEACHER, settings=settings, fields=FIELDS, writer_id=writer_id
    )


def commit(writer: StoreWriter, indices) -> None:
    arrays = {name: np.stack([small_arrays(index)[name] for index in indices]) for name in FIELDS}
    writer.commit([small_row(index) for index in indices], arrays)


def test_the_writer_that_loses_the_race_with_other_settings_is_refused_at_its_first_commit(tmp_path):
    url = tmp_path / "store"
    winner = writer_with(url, SETTINGS, "winner")
    loser = writer_with(url, {**SETTINGS, "num_inference_steps": 9}, "loser")
    same = writer_with(url, SETTINGS, "same")
    assert not url.exists() or not (url / "store.json").exists()  # constructing writes nothing
    commit(winner, range(3))
    refusal = (
        f"{re.escape(str(url))} was made with .*\\(settings\\.num_inference_steps: 4 in the store, 9 here"
    )
    with pytest.raises(DistillCacheError, match=refusal):
        commit(loser, range(3, 6))
    with pytest.raises(DistillCacheError, match=refusal):  # made now, it is refused at once
        writer_with(url, {**SETTINGS, "num_inference_steps": 9}, "late")
    assert not (url / "groups" / "loser").exists()
    assert json.loads((url / "store.json").read_text())["settings"] == SETTINGS
    commit(same, range(3, 6))
    reader = StoreReader(url)
    assert reader.writers == ["same", "winner"]
    assert_small_reads_back(reader, range(6))
