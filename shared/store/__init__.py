"""The store format v1, shared by both phases: one module per job.

    schema.py       FieldSpec, safe names          dtypes.py     storage dtypes (bfloat16 as uint16 bits)
    paths.py        local folder or fsspec URL     format.py     store.json: version, fingerprint, settings, fields
    arrays.py       Zarr layout, codecs, reads     manifest.py   Parquet manifest files (the commit record)
    checksum.py     CRC-32C per row and field      ids.py        sample_id(s)_for, split_for
    fingerprint.py  teacher digests                writer.py     StoreWriter
    reader.py       StoreReader                    verify.py     verify_store
    batches.py      random (sample, step) training examples from whole chunks
    committed_ids.py  CommittedIds: the resume check, many jobs at once

See DESIGN.md ("The store") for the layout and docs/contracts.md for the API. Importing the package
does not import torch (its tools start in a second); `example_batches` is imported on first use.
"""

from shared.store.committed_ids import CommittedIds
from shared.store.fingerprint import fingerprint_digest, state_dict_digest
from shared.store.format import FORMAT_VERSION
from shared.store.ids import sample_id_for, sample_ids_for, split_for
from shared.store.reader import StoreReader
from shared.store.schema import FieldSpec
from shared.store.verify import verify_store
from shared.store.writer import StoreWriter, committed_manifest, committed_sample_ids


def __getattr__(name: str):
    if name == "example_batches":  # imports torch
        from shared.store.batches import example_batches

        return example_batches
    raise AttributeError(f"module 'shared.store' has no attribute {name!r}")


__all__ = [
    "CommittedIds",
    "FORMAT_VERSION",
    "FieldSpec",
    "StoreReader",
    "StoreWriter",
    "example_batches",
    "fingerprint_digest",
    "sample_id_for",
    "sample_ids_for",
    "split_for",
    "state_dict_digest",
    "committed_manifest",
    "committed_sample_ids",
    "verify_store",
]
