"""Fields of the training split held in host memory, each distinct row stored once.

Rows that repeat are kept once, with an index per position: the text conditioning of every seed of a
prompt, the empty prompt's embedding of every row. A store of 16 seeds per prompt holds its
`cond.*` fields in 1/16 of their stored bytes and its `uncond.*` fields in one row. Which fields
`--loader auto` holds is chosen before anything is read, from the manifest's per-row checksums
(`held_nbytes`). Values keep their stored dtype (float16 stays float16).

    held = hold_field(reader, "cond.encoder_hidden_states", manifest_rows, positions, count=len(split))
    held.take(torch.tensor([3, 0]))   # (2, 77, 768): the rows at split positions 3 and 0
"""

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from shared.store.dtypes import from_storage, storage_dtype

SLOT_BYTES = 8  # one int64 index per split position
BLOCK_BYTES = 2**20  # rows read at once while holding a field: the transient memory of a hold


@dataclass
class HeldField:
    values: torch.Tensor  # (U, ...) the distinct rows, stored dtype
    # (N,) int64: split position -> row of `values`; -1: a position this process never reads
    slot: torch.Tensor

    def take(self, positions: torch.Tensor) -> torch.Tensor:
        slots = self.slot[positions]
        assert bool((slots >= 0).all()), "a position outside `needed` was read"
        return self.values[slots]

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.slot.nbytes


def held_nbytes(reader, name: str, rows: list[int], count: int) -> int:
    """Bytes `hold_field` will take for `rows`, from the manifest alone: distinct rows x row bytes (rows
    with equal bytes have equal checksums) plus the index."""
    return reader.distinct_rows(name, rows) * reader.fields[name].sample_nbytes + SLOT_BYTES * count


def hold_field(reader, name: str, rows: list[int], positions: list[int], count: int) -> HeldField:
    """Field `name` of manifest `rows` (at split `positions`, of a split of `count`), kept once per
    distinct row. Read in storage order, BLOCK_BYTES at a time: each read is a few long runs of rows
    (Zarr's cost is per run), and only one block is ever held twice."""
    spec = reader.fields[name]
    position_of = dict(zip(rows, positions))
    in_order = [int(row) for row in reader.in_storage_order(rows)]
    block_rows = max(1, BLOCK_BYTES // max(1, spec.sample_nbytes))
    slot = np.full(count, -1, dtype=np.int64)
    index_of: dict[bytes, int] = {}  # row digest -> row of `kept`
    kept: list[np.ndarray] = []
    for start in range(0, len(in_order), block_rows):
        block_of_rows = in_order[start : start + block_rows]
        for row, values in zip(block_of_rows, reader.read_stored(name, block_of_rows)):
            digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
            if digest not in index_of:
                index_of[digest] = len(kept)
                kept.append(values.copy())  # a copy: the block is freed once its new rows are kept
            slot[position_of[row]] = index_of[digest]
    stacked = np.stack(kept) if kept else np.empty((0, *spec.shape), dtype=storage_dtype(spec.dtype))
    return HeldField(from_storage(stacked, spec.dtype), torch.from_numpy(slot))
