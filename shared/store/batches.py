"""Random (sample, step) training examples, read as whole chunks and shuffled in memory.

    for batch in example_batches(reader, reader.indices("train"), batch_size=64,
                                 step_fields={"trajectory": (0,)}, sample_fields=("cond.encoder_hidden_states",),
                                 generator=torch.Generator().manual_seed(0)):
        batch["trajectory"]                   # (64, 1, 4, 64, 64): trajectory[row, step + offset]
        batch["cond.encoder_hidden_states"]   # (64, 77, 768)
        batch["row"], batch["step"]           # (64,), (64,): manifest row index and drawn step

One epoch: every (row, step) pair exactly once. Rows are shuffled and read `block_rows` at a time,
whole (one batched read per field, so Zarr decodes each chunk once instead of once per example);
the block's pairs are then shuffled in memory and cut into batches, a block's leftover carried into
the next, and the next block is read in a background thread while batches are cut from this one.
`step_fields` maps a per-step field to the offsets read from the drawn step (e.g.
{"trajectory": (0, 2)} for a point and the one two grid steps later); only steps for which every
offset exists are drawn. Memory: two blocks (for SD1.5, 64 rows of trajectory, cond/uncond outputs and
embeddings are ~170 MB each).
"""

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from shared.errors import DistillCacheError
from shared.store.dtypes import from_storage


def example_batches(
    reader,
    rows: Sequence[int],
    *,
    batch_size: int,
    step_fields: Mapping[str, Sequence[int]],
    sample_fields: Sequence[str] = (),
    steps: Sequence[int] | None = None,
    block_rows: int = 64,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    if batch_size <= 0 or block_rows <= 0:
        raise DistillCacheError("batch_size and block_rows must be positive")
    steps = valid_steps(reader, step_fields, steps)
    rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    shuffled = rows[torch.randperm(len(rows), generator=generator)]
    blocks = [block.sort().values for block in shuffled.split(block_rows)]  # sorted: fewer, longer runs
    leftover: dict[str, torch.Tensor] | None = None
    for block, stored in prefetched_blocks(reader, blocks, (*step_fields, *sample_fields)):
        pairs = torch.randperm(len(block) * len(steps), generator=generator)
        for chosen in pairs.split(batch_size):
            piece = gather_examples(reader, block, stored, chosen, steps, step_fields, sample_fields)
            if leftover is not None:
                piece = {name: torch.cat([leftover[name], piece[name]]) for name in piece}
                leftover = None
            if len(piece["row"]) >= batch_size:
                yield {name: value[:batch_size] for name, value in piece.items()}
                piece = {name: value[batch_size:] for name, value in piece.items()}
            if len(piece["row"]):
                leftover = piece
    if leftover is not None and not drop_last:
        yield leftover


def prefetched_blocks(reader, blocks: list[torch.Tensor], names: Sequence[str]) -> Iterator[tuple]:
    """(block rows, {field: stored values of those rows}); the next block is read while this one is used."""

    def read(block: torch.Tensor) -> dict[str, np.ndarray]:
        return {name: reader.read_stored(name, block) for name in names}

    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(read, blocks[0]) if blocks else None
        for index, block in enumerate(blocks):
            stored = upcoming.result()
            if index + 1 < len(blocks):
                upcoming = pool.submit(read, blocks[index + 1])
            yield block, stored


def gather_examples(
    reader,
    block: torch.Tensor,
    stored: dict[str, np.ndarray],
    chosen: torch.Tensor,
    steps: torch.Tensor,
    step_fields: Mapping[str, Sequence[int]],
    sample_fields: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The examples `chosen` (indices of (row in block, step) pairs) as tensors.

    Numpy does the gathering: its fancy indexing copies float16 rows far faster than torch's.
    """
    local_rows, drawn_steps = (chosen // len(steps)).numpy(), steps[chosen % len(steps)]
    piece = {"row": block[local_rows], "step": drawn_steps}
    for name, offsets in step_fields.items():
        step_index = drawn_steps.numpy()[:, None] + np.asarray(offsets)[None, :]  # (b, len(offsets))
        values = stored[name][local_rows[:, None], step_index]  # (b, len(offsets), *shape[1:])
        piece[name] = from_storage(values, reader.fields[name].dtype)
    for name in sample_fields:
        values = np.take(stored[name], local_rows, axis=0)  # (b, *shape)
        piece[name] = from_storage(values, reader.fields[name].dtype)
    return piece


def valid_steps(
    reader, step_fields: Mapping[str, Sequence[int]], steps: Sequence[int] | None
) -> torch.Tensor:
    """The steps n for which field[n + offset] exists for every per-step field and offset."""
    if not step_fields:
        raise DistillCacheError(
            "example_batches needs at least one per-step field, e.g. {'trajectory': (0,)}"
        )
    low, high = 0, None
    for name, offsets in step_fields.items():
        spec = reader.fields.get(name)
        if spec is None or not spec.shape or not offsets:
            raise DistillCacheError(f"{name!r} is not a per-step field of this store (or has no offsets)")
        low = max(low, -min(offsets))
        limit = spec.shape[0] - max(offsets)
        high = limit if high is None else min(high, limit)
    allowed = torch.arange(low, max(low, high))
    if steps is not None:
        steps = torch.as_tensor(np.asarray(steps, dtype=np.int64))
        if not bool(torch.isin(steps, allowed).all()):
            raise DistillCacheError(f"steps must lie in [{low}, {high}) for these fields and offsets")
        allowed = steps
    if len(allowed) == 0:
        raise DistillCacheError("no step has every requested offset inside its field")
    return allowed
