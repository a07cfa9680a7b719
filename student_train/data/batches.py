"""Store -> batches of tensors on the training device, from memory or streamed from the store.

loader="memory" reads the split's fields into host memory once (in their stored dtypes; one batched
read per field). loader="stream" reads each micro-batch from the store when it is needed (one batched
read per field, made in a reader thread while the previous batch trains): memory is a few batches
whatever the cache's size — an SD1.5 lcm row (trajectory + cond/uncond outputs, float16) is ~5 MB,
so a 10k-row cache would not fit in RAM — but each batch pays the store's per-read cost (~1 ms per
row and field: more than a tiny denoiser's step). loader="auto" keeps a split of under
MEMORY_LOADER_LIMIT bytes in memory and streams a bigger one. Values arrive as float32 on the device
either way.

The order of samples is a function of (seed, position) only — position p = micro_step * batch_size
+ j goes to epoch p // N, slot p % N of that epoch's permutation — so a resumed run sees exactly the
batches an uninterrupted one would, from memory or streamed.

    data = TrainingData(reader, ("trajectory", "out_cond", "out_uncond"), split="train", loader="auto")
    for batch in data.batches([rows_for_micro_step(len(data), 16, seed, m) for m in micro_steps], device):
        batch.fields["trajectory"]   # (B, S + 1, C, H, W) float32
        batch.cond                   # nested denoiser kwargs, e.g. {"encoder_hidden_states": (B, 77, 768)}
"""

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from shared.errors import DistillCacheError
from student_train.config import LOADERS
from student_train.students.denoiser import nest_conditioning

# Store field -> the `teacher-cache run --fields` group that writes it ("name.*": every field named so).
FIELD_GROUP = {"noise": "noise", "trajectory": "trajectory", "final_latents": "final_latents"}
FIELD_GROUP.update({"out_cond": "out", "out_uncond": "out", "cond.*": "cond", "uncond.*": "cond"})
FIELD_GROUP.update({"features.*": "features"})
MEMORY_LOADER_LIMIT = 2 * 2**30  # bytes of a split that loader="auto" keeps in memory


@dataclass
class Batch:
    fields: dict[str, torch.Tensor]  # name -> (B, ...)
    cond: dict  # nested conditioning kwargs, each (B, ...)
    sample_ids: list[str]
    guidance_scale: torch.Tensor | None = None  # (B,) each row's CFG scale (manifest), pipeline convention


def expand_fields(reader_fields, names: tuple[str, ...]) -> tuple[str, ...]:
    """Field names with every "prefix.*" replaced by the store's fields of that prefix, in store order."""
    expanded: list[str] = []
    for name in names:
        if name.endswith(".*"):
            expanded += [field for field in reader_fields if field.startswith(name[:-1])]
        else:
            expanded.append(name)
    return tuple(dict.fromkeys(expanded))


class TrainingData:
    """The rows of one split of a store and the fields a method reads (plus every cond.* field)."""

    def __init__(
        self,
        reader,
        fields: tuple[str, ...],
        split: str = "train",
        max_samples: int = 0,
        loader: str = "stream",
    ):
        self.reader = reader
        self.rows = select_rows(reader, split, max_samples)
        self.names = expand_fields(reader.fields, (*fields, "cond.*"))
        all_ids = reader.manifest.column("sample_id").to_pylist()
        self.sample_ids = [str(all_ids[r]) for r in self.rows]
        guidance = reader.manifest.column("guidance_scale").to_pylist()
        self.guidance_scale = torch.tensor([float(guidance[r]) for r in self.rows])  # (N,)
        self.in_memory = uses_memory(loader, self.nbytes)
        self.preloaded = (
            {name: reader.read(name, self.rows) for name in self.names} if self.in_memory else None
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """Bytes of the split's fields as stored."""
        return sum(len(self.rows) * self.reader.fields[name].sample_nbytes for name in self.names)

    def read(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """{field: (B, ...)} of the split's rows at `positions`, in the stored dtypes, on the host."""
        if self.preloaded is not None:
            return {name: values[positions] for name, values in self.preloaded.items()}
        rows = [self.rows[i] for i in positions.tolist()]
        return {name: self.reader.read(name, rows) for name in self.names}

    def batch(self, positions: torch.Tensor, device: torch.device | str) -> Batch:
        return self.on_device(positions, self.read(positions), device)

    def batches(self, schedule: Iterable[torch.Tensor], device: torch.device | str) -> Iterator[Batch]:
        """The batches of `schedule` (positions per micro-batch), in order; the next one is read in a
        background thread while the caller trains on this one."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-reader") as pool:
            pending = None  # (positions, future of their values)
            for positions in schedule:
                upcoming = (positions, pool.submit(self.read, positions))
                if pending is not None:
                    yield self.on_device(pending[0], pending[1].result(), device)
                pending = upcoming
            if pending is not None:
                yield self.on_device(pending[0], pending[1].result(), device)

    def on_device(self, positions: torch.Tensor, values: dict[str, torch.Tensor], device) -> Batch:
        values = {name: value.to(device).float() for name, value in values.items()}
        cond = {name[len("cond.") :]: value for name, value in values.items() if name.startswith("cond.")}
        fields = {name: value for name, value in values.items() if not name.startswith("cond.")}
        sample_ids = [self.sample_ids[i] for i in positions.tolist()]
        return Batch(fields, nest_conditioning(cond), sample_ids, self.guidance_scale[positions].to(device))


def uses_memory(loader: str, nbytes: int) -> bool:
    if loader not in LOADERS:
        raise DistillCacheError(f"unknown --loader {loader!r}; valid: {', '.join(LOADERS)}")
    return loader == "memory" or (loader == "auto" and nbytes <= MEMORY_LOADER_LIMIT)


def check_fields(reader, method_name: str, needed: tuple[str, ...]) -> None:
    """A store without what the method reads: one line naming the phase-one flags that add it."""
    missing = [
        name
        for name in (*needed, "cond.*")
        if not set(expand_fields(reader.fields, (name,))) & set(reader.fields)
    ]
    if missing:
        groups = ",".join(dict.fromkeys(FIELD_GROUP[name] for name in (*needed, "cond.*")))
        halves = (("out_uncond", "out_cond"), ("uncond.*", "cond.*"))  # only the CFG half is missing
        cfg_only = any(uncond in missing and cond not in missing for uncond, cond in halves)
        hint = " and --guidance > 1 (CFG)" if cfg_only else ""
        flags = ' --features "down_blocks.*,mid_block,up_blocks.*" [--feature-steps I,J,...]'
        raise DistillCacheError(
            f"the store has no {', '.join(missing)}, which --method {method_name} reads; "
            f"cache them with `teacher-cache run --fields {groups}{flags if 'features.*' in missing else ''}`{hint}"
        )


def select_rows(reader, split: str, max_samples: int) -> list[int]:
    rows = reader.indices(None if split == "all" else split)
    rows = [int(r) for r in rows][: max_samples or None]
    if not rows:
        raise DistillCacheError(
            f"the store has no rows in split {split!r}; use --split all or a bigger cache"
        )
    return rows


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
