"""Tiny stores for the store tests: fields of every dtype, rows and arrays that depend on the index only.

write_samples(url, range(0, 12), batch_size=4)        # three commits
expected_arrays(5)["trajectory"]                       # what sample 5 must read back as
"""

import numpy as np
import torch

from shared.store import FieldSpec, StoreWriter, sample_id_for

FINGERPRINT = {"pipeline_class": "TinyPipeline", "weights_hash": "0" * 64, "denoiser_hash": "1" * 64}
TEACHER = {"source": "tests/tiny-teacher", "revision": None}
SETTINGS = {
    "num_inference_steps": 5,
    "guidance_scale": 3.0,
    "timesteps": [801, 601, 401, 201, 1],
    "val_fraction": 0.25,
}
FIELDS = {
    "trajectory": FieldSpec("float16", (6, 4, 8, 8)),
    "out_cond": FieldSpec("float32", (5, 4, 8, 8)),
    "cond.encoder_hidden_states": FieldSpec("bfloat16", (7, 32)),
    "preview": FieldSpec("uint8", (16, 16, 3)),
    "cond.added_cond_kwargs.time_ids": FieldSpec("int32", (6,)),
    "token_count": FieldSpec("int64", ()),
}


def sample_row(index: int, fingerprint: dict = FINGERPRINT) -> dict:
    prompt, seed = f"a tiny prompt {index % 5}", index
    return {
        "sample_id": sample_id_for(fingerprint, prompt, "", seed, 3.0),
        "prompt": prompt,
        "negative_prompt": "",
        "seed": seed,
        "guidance_scale": 3.0,
        "num_inference_steps": 5,
    }


def expected_arrays(index: int, fields: dict = FIELDS) -> dict[str, torch.Tensor]:
    """The arrays of sample `index`, in each field's dtype, a function of the index alone."""
    generator = torch.Generator().manual_seed(1000 + index)
    arrays = {}
    for name, spec in fields.items():
        if spec.dtype == "uint8":
            values = torch.randint(0, 256, spec.shape, generator=generator, dtype=torch.uint8)
        elif spec.dtype in ("int32", "int64"):
            values = torch.randint(-(2**30), 2**30, spec.shape, generator=generator).to(
                getattr(torch, spec.dtype)
            )
        else:
            values = torch.randn(spec.shape, generator=generator).to(getattr(torch, spec.dtype))
        arrays[name] = values
    return arrays


def batch_for(indices, fields: dict = FIELDS) -> tuple[list[dict], dict[str, torch.Tensor]]:
    samples = [expected_arrays(index, fields) for index in indices]
    arrays = {name: torch.stack([sample[name] for sample in samples]) for name in fields}
    return [sample_row(index) for index in indices], arrays


def write_samples(url, indices, batch_size: int = 4, fields: dict = FIELDS, **writer_options) -> StoreWriter:
    writer = StoreWriter(
        url, fingerprint=FINGERPRINT, teacher=TEACHER, settings=SETTINGS, fields=fields, **writer_options
    )
    indices = [index for index in indices if sample_row(index)["sample_id"] not in writer.committed_ids]
    for start in range(0, len(indices), batch_size):
        writer.commit(*batch_for(indices[start : start + batch_size], fields))
    return writer


def writer_groups(store_folder) -> list:
    """The writer group folders of a local store."""
    return sorted(path for path in (store_folder / "groups").iterdir() if path.is_dir())


def index_by_sample_id(indices) -> dict[str, int]:
    return {sample_row(index)["sample_id"]: index for index in indices}


def assert_reads_back(reader, indices) -> None:
    """Every committed row reads back exactly as written, and the rows are exactly `indices`."""
    by_id = index_by_sample_id(indices)
    sample_ids = reader.manifest.column("sample_id").to_pylist()
    assert sorted(sample_ids) == sorted(by_id), "committed rows differ from the samples written"
    rows = np.arange(len(sample_ids))
    for name in reader.fields:
        values = reader.read(name, rows)
        for row, sample_id in enumerate(sample_ids):
            assert torch.equal(values[row], expected_arrays(by_id[sample_id])[name]), (name, sample_id)
