"""Small stores written without torch (a child process that imports no torch starts in a second), for
the tests that run writers, compactors, copies and merges as separate processes.

    write_small(url, range(0, 12), batch_size=4)     # rows and arrays a function of the index alone
    assert_small_reads_back(StoreReader(url), range(12))
"""

import numpy as np

from shared.store import FieldSpec, StoreWriter, sample_id_for

FINGERPRINT = {"pipeline_class": "SmallPipeline", "weights_hash": "2" * 64, "denoiser_hash": "3" * 64}
TEACHER = {"source": "tests/small-teacher", "revision": None}
SETTINGS = {"num_inference_steps": 4, "guidance_scale": 2.0, "val_fraction": 0.25}
FIELDS = {"latents": FieldSpec("float16", (3, 4, 4)), "label": FieldSpec("int32", ())}


def small_row(index: int) -> dict:
    prompt = f"a small prompt {index % 7}"
    return {
        "sample_id": sample_id_for(FINGERPRINT, prompt, "", index, 2.0),
        "prompt": prompt,
        "negative_prompt": "",
        "seed": index,
        "guidance_scale": 2.0,
        "num_inference_steps": 4,
    }


def small_arrays(index: int) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(index)
    return {
        "latents": generator.standard_normal((3, 4, 4)).astype(np.float16),
        "label": np.asarray(index * 7 - 3, dtype=np.int32),
    }


def small_writer(url, **options) -> StoreWriter:
    return StoreWriter(
        url, fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=FIELDS, **options
    )


def commit_small(writer: StoreWriter, indices) -> None:
    """One commit of the samples `indices`, whether or not they are in the store already."""
    arrays = {name: np.stack([small_arrays(index)[name] for index in indices]) for name in FIELDS}
    writer.commit([small_row(index) for index in indices], arrays)


def write_small(url, indices, batch_size: int = 4, **writer_options) -> StoreWriter:
    """Commit the samples `indices` not yet in the store, `batch_size` per commit."""
    writer = small_writer(url, **writer_options)
    indices = [index for index in indices if small_row(index)["sample_id"] not in writer.committed_ids]
    for start in range(0, len(indices), batch_size):
        commit_small(writer, indices[start : start + batch_size])
    return writer


def small_ids(indices) -> dict[str, int]:
    """{sample_id: index}."""
    return {small_row(index)["sample_id"]: index for index in indices}


def assert_small_reads_back(reader, indices) -> None:
    """The committed rows are exactly `indices`, each reading back as written."""
    by_id = small_ids(indices)
    sample_ids = reader.manifest.column("sample_id").to_pylist()
    assert sorted(sample_ids) == sorted(by_id), "committed rows differ from the samples written"
    rows = np.arange(len(sample_ids))
    for name in FIELDS:
        values = reader.read_stored(name, rows)
        for row, sample_id in enumerate(sample_ids):
            assert np.array_equal(values[row], small_arrays(by_id[sample_id])[name]), (name, sample_id)
