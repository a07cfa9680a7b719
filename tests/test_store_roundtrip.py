"""The store round trip: every dtype, step reads, splits, ids, commit visibility, memory://, batches.

.venv/bin/python -m pytest tests/test_store_roundtrip.py -q
"""

import hashlib
import json
import uuid

import numpy as np
import pytest
import torch

from shared.errors import DistillCacheError
from shared.store import (
    FieldSpec,
    StoreReader,
    StoreWriter,
    example_batches,
    sample_id_for,
    sample_ids_for,
    split_for,
    verify_store,
)
from tests.store_fixtures import (
    FIELDS,
    FINGERPRINT,
    SETTINGS,
    TEACHER,
    assert_reads_back,
    batch_for,
    expected_arrays,
    index_by_sample_id,
    write_samples,
)


@pytest.mark.parametrize("compressor", ["zstd", "lz4", "none"])
def test_every_dtype_reads_back_exactly(tmp_path, compressor):
    write_samples(tmp_path / "store", range(10), batch_size=4, compressor=compressor)
    reader = StoreReader(tmp_path / "store")
    assert {name: str(reader.read(name, [0]).dtype) for name in FIELDS} == {
        name: f"torch.{spec.dtype}" for name, spec in FIELDS.items()
    }
    assert_reads_back(reader, range(10))


def test_steps_select_along_the_first_axis_in_any_row_order(tmp_path):
    write_samples(tmp_path / "store", range(9), batch_size=3)
    reader = StoreReader(tmp_path / "store")
    by_id = index_by_sample_id(range(9))
    rows = [7, 2, 2, 0]  # unsorted, repeated
    values = reader.read("trajectory", rows, steps=[5, 0, 3])
    assert values.shape == (4, 3, 4, 8, 8)
    for position, row in enumerate(rows):
        expected = expected_arrays(by_id[reader.manifest.column("sample_id")[row].as_py()])["trajectory"]
        assert torch.equal(values[position], expected[[5, 0, 3]])


def test_rows_are_invisible_until_their_manifest_is_published(tmp_path, monkeypatch):
    writer = write_samples(tmp_path / "store", range(4))

    def fail_before_publishing(self, table, relative):
        raise OSError("disk full")

    monkeypatch.setattr(StoreWriter, "_publish_manifest", fail_before_publishing)
    with pytest.raises(DistillCacheError, match=r"disk full.*nothing of this batch was committed"):
        writer.commit(*batch_for(range(4, 8)))
    assert len(StoreReader(tmp_path / "store")) == 4
    assert verify_store(tmp_path / "store") == []


def test_a_reader_sees_the_rows_committed_when_it_opened(tmp_path):
    writer = write_samples(tmp_path / "store", range(4))
    reader = StoreReader(tmp_path / "store")
    writer.commit(*batch_for(range(4, 8)))
    assert len(reader) == 4 and len(StoreReader(tmp_path / "store")) == 8


def test_committed_ids_cover_every_writer_and_resume_skips_them(tmp_path):
    write_samples(tmp_path / "store", range(6))
    second = write_samples(tmp_path / "store", range(10))  # only 6..9 are new
    assert second.committed_ids == set(index_by_sample_id(range(10)))
    reader = StoreReader(tmp_path / "store")
    assert len(reader) == 10 and len(reader.writers) == 2
    assert_reads_back(reader, range(10))


def test_a_named_writer_reopens_its_group_on_fresh_shards(tmp_path):
    write_samples(tmp_path / "store", range(3), batch_size=2, writer_id="rank0")
    write_samples(tmp_path / "store", range(7), batch_size=2, writer_id="rank0")
    reader = StoreReader(tmp_path / "store")
    assert reader.writers == ["rank0"]
    assert sorted(reader.manifest.column("row").to_pylist()) == [0, 1, 2, 4, 5, 6, 7]  # shard of 2 rows each
    assert_reads_back(reader, range(7))


def test_memory_url_store_works_end_to_end():
    url = f"memory://distillcache-test-{uuid.uuid4().hex}"
    write_samples(url, range(8), batch_size=3)
    reader = StoreReader(url)
    assert_reads_back(reader, range(8))
    assert verify_store(url) == []
    assert reader.nbytes > 0


def test_sample_id_depends_on_every_input_and_on_nothing_else():
    base = sample_id_for(FINGERPRINT, "a red seven", "", 3, 4.0)
    assert base == sample_id_for(
        dict(reversed(FINGERPRINT.items())), "a red seven", None, 3, 4, source_key=""
    )
    variants = [
        sample_id_for({**FINGERPRINT, "denoiser_hash": "2" * 64}, "a red seven", "", 3, 4.0),
        sample_id_for(FINGERPRINT, "a red seven", "", 3, 4.0, source_key="image:0001"),
        sample_id_for(FINGERPRINT, "a red eight", "", 3, 4.0),
        sample_id_for(FINGERPRINT, "a red seven", "blurry", 3, 4.0),
        sample_id_for(FINGERPRINT, "a red seven", "", 4, 4.0),
        sample_id_for(FINGERPRINT, "a red seven", "", 3, 4.5),
    ]
    assert base not in variants and len(set(variants)) == len(variants)


def test_sample_ids_are_the_documented_hash_one_job_or_many():
    """sha256 of the canonical JSON of [fingerprint digest, prompt, negative, seed, guidance, source key],
    by hand; the literals are the ids student-train's stores hold (computed before sample_ids_for)."""

    def by_hand(prompt, negative, seed, guidance, source_key):
        canonical = dict(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(json.dumps(FINGERPRINT, **canonical).encode()).hexdigest()
        key = [digest, prompt, negative or "", int(seed), float(guidance), str(source_key)]
        return hashlib.sha256(json.dumps(key, **canonical).encode()).hexdigest()[:32]

    jobs = [
        ("a red seven", "", 3, 4.0, ""),
        ('é "quoted" \\ back\nslash ✓', None, 2**40, 7, "image:0001"),
        ("", "blurry", np.int64(5), np.float32(1.5), ""),
    ]
    ids = sample_ids_for(FINGERPRINT, jobs)
    assert ids == [by_hand(*job) for job in jobs] == [sample_id_for(FINGERPRINT, *job) for job in jobs]
    assert ids[:2] == ["cacacbb90e997525808be0ba1cbf0a3b", "8713e3bb7c4d7d2908fe40a116dacd5d"]


def test_split_is_a_stable_hash_with_the_requested_share():
    ids = [sample_id_for(FINGERPRINT, "p", "", seed, 1.0) for seed in range(4000)]
    splits = [split_for(sample_id, 0.1) for sample_id in ids]
    assert splits == [split_for(sample_id, 0.1) for sample_id in ids]
    assert 0.08 < splits.count("val") / len(ids) < 0.12
    assert {split_for(sample_id, 0.0) for sample_id in ids} == {"train"}


def test_manifest_splits_follow_val_fraction(tmp_path):
    write_samples(tmp_path / "store", range(40), batch_size=8)
    reader = StoreReader(tmp_path / "store")
    train, val = reader.indices("train"), reader.indices("val")
    assert len(train) + len(val) == 40 and len(val) > 0
    expected = [
        split_for(sample_id, SETTINGS["val_fraction"])
        for sample_id in reader.manifest.column("sample_id").to_pylist()
    ]
    assert [("val" if row in set(val) else "train") for row in range(40)] == expected


def test_example_batches_give_every_pair_once_with_the_right_values(tmp_path):
    write_samples(tmp_path / "store", range(10), batch_size=4)
    reader = StoreReader(tmp_path / "store")
    by_id = index_by_sample_id(range(10))
    seen = []
    batches = example_batches(
        reader,
        reader.indices(),
        batch_size=8,
        step_fields={"trajectory": (0, 1), "out_cond": (0,)},
        sample_fields=("cond.encoder_hidden_states",),
        block_rows=3,
        generator=torch.Generator().manual_seed(0),
    )
    for batch in batches:
        assert batch["trajectory"].shape[1:] == (2, 4, 8, 8) and batch["out_cond"].shape[1:] == (1, 4, 8, 8)
        for k, (row, step) in enumerate(zip(batch["row"].tolist(), batch["step"].tolist())):
            expected = expected_arrays(by_id[reader.manifest.column("sample_id")[row].as_py()])
            assert torch.equal(batch["trajectory"][k], expected["trajectory"][step : step + 2])
            assert torch.equal(batch["out_cond"][k, 0], expected["out_cond"][step])
            assert torch.equal(batch["cond.encoder_hidden_states"][k], expected["cond.encoder_hidden_states"])
            seen.append((row, step))
    # trajectory has 6 steps and out_cond 5; offset 1 leaves steps 0..4
    assert sorted(seen) == [(row, step) for row in range(10) for step in range(5)]


def test_commit_refuses_bad_arrays_and_rows_before_writing_anything(tmp_path):
    writer = StoreWriter(
        tmp_path / "store", fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=FIELDS
    )
    rows, arrays = batch_for(range(3))
    bad_inputs = [
        (rows, {**arrays, "trajectory": arrays["trajectory"][:, :5]}),  # wrong shape
        (rows, {name: value for name, value in arrays.items() if name != "preview"}),  # missing field
        (rows, {**arrays, "extra": arrays["preview"]}),  # unknown field
        ([rows[0], rows[0], rows[1]], arrays),  # same sample twice
        ([{**row, "split": "val"} for row in rows], arrays),  # a column the writer owns
        ([{key: value for key, value in row.items() if key != "seed"} for row in rows], arrays),
        ([{**row, "seed": "three"} for row in rows], arrays),  # a value of the wrong type
        ([{**row, "sample_id": 7} for row in rows], arrays),
    ]
    for bad_rows, bad_arrays in bad_inputs:
        with pytest.raises(DistillCacheError):
            writer.commit(bad_rows, bad_arrays)
    assert not (tmp_path / "store").exists()


def test_writer_refuses_unsafe_names_and_unknown_options(tmp_path):
    for options in (
        {"fields": {"../escape": FieldSpec("float16", (2,))}},
        {"fields": FIELDS, "writer_id": "a/b"},
        {"fields": FIELDS, "compressor": "pickle"},
        {"fields": {"x": FieldSpec("float16", (2,))}, "clevel": 12},
    ):
        with pytest.raises(DistillCacheError):
            StoreWriter(
                tmp_path / "store", fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, **options
            )
    with pytest.raises(DistillCacheError, match="dtype"):
        FieldSpec("complex64", (2,))
    assert not (tmp_path / "store").exists()


def test_reader_reports_unknown_fields_rows_and_splits(tmp_path):
    write_samples(tmp_path / "store", range(4))
    reader = StoreReader(tmp_path / "store")
    with pytest.raises(DistillCacheError, match="no field"):
        reader.read("features.mid_block", [0])
    with pytest.raises(DistillCacheError, match="row indices"):
        reader.read("trajectory", [4])
    with pytest.raises(DistillCacheError, match="steps"):
        reader.read("trajectory", [0], steps=[6])
    with pytest.raises(DistillCacheError, match="split"):
        reader.indices("test")
    assert np.array_equal(reader.indices(), np.arange(4))
