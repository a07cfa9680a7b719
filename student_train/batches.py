"""Store -> batches of tensors on the training device.

The rows of one split are read into memory once, one batched read per field (the store reads whole
chunks: per-read overhead, not bandwidth, limits a naive loader), as float32. The order of samples
is a function of (seed, position) only — position p = micro_step * batch_size + j goes to epoch
p // N, slot p % N of that epoch's permutation — so a resumed run sees exactly the batches an
uninterrupted one would, whatever was cached before.

    data = load_training_data(reader, ("trajectory", "out_cond", "out_uncond"), split="train")
    batch = data.batch(rows_for_micro_step(len(data), batch_size, seed, micro_step), device)
    batch.fields["trajectory"]   # (B, S + 1, C, H, W)
    batch.cond                   # nested denoiser kwargs, e.g. {"encoder_hidden_states": (B, 77, 768)}
"""

from dataclasses import dataclass

import torch

from shared.errors import DistillCacheError
from student_train.denoiser import nest_conditioning

# Store field -> the `teacher-cache run --fields` group that writes it.
FIELD_GROUP = {"noise": "noise", "trajectory": "trajectory", "final_latents": "final_latents"}
FIELD_GROUP.update({"out_cond": "out", "out_uncond": "out", "cond.*": "cond"})


@dataclass
class Batch:
    fields: dict[str, torch.Tensor]  # name -> (B, ...)
    cond: dict  # nested conditioning kwargs, each (B, ...)
    sample_ids: list[str]


@dataclass
class TrainingData:
    fields: dict[str, torch.Tensor]  # name -> (N, ...), float32, in host memory
    cond: dict[str, torch.Tensor]  # flat "encoder_hidden_states" / "added_cond_kwargs.time_ids" -> (N, ...)
    sample_ids: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def batch(self, rows: torch.Tensor, device: torch.device | str) -> Batch:
        take = {name: value[rows].to(device, non_blocking=True) for name, value in self.fields.items()}
        cond = nest_conditioning({name: value[rows].to(device) for name, value in self.cond.items()})
        return Batch(take, cond, [self.sample_ids[i] for i in rows.tolist()])


def check_fields(reader, method_name: str, needed: tuple[str, ...]) -> None:
    """A store without what the method reads: one line naming the phase-one flags that add it."""
    missing = [name for name in needed if name not in reader.fields]
    if not any(name.startswith("cond.") for name in reader.fields):
        missing.append("cond.*")
    if missing:
        groups = ",".join(dict.fromkeys(FIELD_GROUP[name] for name in (*needed, "cond.*")))
        hint = " and --guidance > 1 (CFG)" if "out_uncond" in missing and "out_cond" not in missing else ""
        raise DistillCacheError(
            f"the store has no {', '.join(missing)}, which --method {method_name} reads; "
            f"cache them with `teacher-cache run --fields {groups}`{hint}"
        )


def select_rows(reader, split: str, max_samples: int) -> list[int]:
    rows = reader.indices(None if split == "all" else split)
    rows = [int(r) for r in rows][: max_samples or None]
    if not rows:
        raise DistillCacheError(
            f"the store has no rows in split {split!r}; use --split all or a bigger cache"
        )
    return rows


def load_training_data(
    reader, fields: tuple[str, ...], split: str = "train", max_samples: int = 0
) -> TrainingData:
    rows = select_rows(reader, split, max_samples)
    loaded = {name: reader.read(name, rows).float() for name in fields}
    cond = {
        name[len("cond.") :]: reader.read(name, rows).float()
        for name in reader.fields
        if name.startswith("cond.")
    }
    all_ids = reader.manifest.column("sample_id").to_pylist()
    sample_ids = [str(all_ids[r]) for r in rows]
    return TrainingData(loaded, cond, sample_ids)


def rows_for_micro_step(num_rows: int, batch_size: int, seed: int, micro_step: int) -> torch.Tensor:
    """The (batch_size,) row indices of one micro-batch: a fresh permutation per epoch."""
    positions = torch.arange(micro_step * batch_size, (micro_step + 1) * batch_size)
    epochs, slots = positions // num_rows, positions % num_rows
    rows = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        permutation = torch.randperm(
            num_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        )
        rows[epochs == epoch] = permutation[slots[epochs == epoch]]
    return rows
