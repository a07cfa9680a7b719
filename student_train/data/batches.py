"""Store -> batches of tensors on the training device, from memory or streamed from the store.

loader="memory" holds the split's fields in host memory, read once (one batched read per field and
block of rows), each distinct row once (held_fields.py: the conditioning of every seed of a prompt is
stored once). loader="stream" reads each micro-batch from the store when it is needed (one batched
read per field, made in a reader thread while the previous batch trains): memory is a few batches
whatever the cache's size — an SD1.5 lcm row (trajectory + cond/uncond outputs, float16) is ~5 MB,
so a 10k-row cache would not fit in RAM — but each batch pays the store's per-read cost (~2-4 ms
per row and field: more than a tiny denoiser's step). loader="auto" holds the fields that fit, the
cheapest first, in the teacher's weights (settings["teacher_nbytes"]: denoiser, text encoders, VAE),
which a training run with the teacher in its loop holds and this one never loads, and streams the
others: the cached run is never the bigger process for its data, and each field held is one read
less per batch (stores written before the size was recorded: MEMORY_LOADER_LIMIT). Either way values
stay in their stored dtype (float16 stays float16) until they are on the device, where they are cast
to float32 once.

The order of samples is a function of (seed, position) only — stream position p goes to epoch
p // N, slot p % N of that epoch's permutation (`rows_at_positions`; which positions each process
and micro-batch takes: training/data_order.py) — so a resumed run sees exactly the batches an
uninterrupted one would, from memory or streamed. `needed` limits what the memory loader reads to
the rows one process trains on.

    data = TrainingData(reader, ("trajectory", "out_cond", "out_uncond"), split="train", loader="auto")
    for batch in data.batches([rows_for_micro_step(len(data), 16, seed, m) for m in micro_steps], device):
        batch.fields["trajectory"]   # (B, S + 1, C, H, W) float32
        batch.cond                   # nested denoiser kwargs, e.g. {"encoder_hidden_states": (B, 77, 768)}
"""

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from shared.errors import DistillCacheError
from student_train.config import LOADERS
from student_train.data.held_fields import held_nbytes, hold_field
from student_train.students.denoiser import nest_conditioning

# Store field -> the `teacher-cache run --fields` group that writes it ("name.*": every field named so).
FIELD_GROUP = {"noise": "noise", "trajectory": "trajectory", "final_latents": "final_latents"}
FIELD_GROUP.update({"out_cond": "out", "out_uncond": "out", "cond.*": "cond", "uncond.*": "cond"})
FIELD_GROUP.update({"features.*": "features"})
FIELD_GROUP.update(
    {f"noised.{name}": "noised" for name in ("x_t", "timestep", "next_timestep", "out_cond", "out_uncond")}
)
MEMORY_LOADER_LIMIT = 2 * 2**30  # loader="auto"'s budget for stores that do not record teacher_nbytes


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
        needed: list[int] | None = None,
    ):
        self.reader = reader
        self.rows = select_rows(reader, split, max_samples)
        self.names = expand_fields(reader.fields, (*fields, "cond.*"))
        all_ids = reader.manifest.column("sample_id").to_pylist()
        self.sample_ids = [str(all_ids[r]) for r in self.rows]
        guidance = reader.manifest.column("guidance_scale").to_pylist()
        self.guidance_scale = torch.tensor([float(guidance[r]) for r in self.rows])  # (N,)
        # The positions (indices into the split) this process will read; None: all of them.
        self.needed = None if needed is None or len(needed) == len(self.rows) else sorted(needed)
        positions = list(range(len(self.rows))) if self.needed is None else self.needed
        kept_rows = [self.rows[i] for i in positions]
        held = fields_to_hold(loader, reader, self.names, kept_rows, len(self.rows))
        self.held = {name: hold_field(reader, name, kept_rows, positions, len(self.rows)) for name in held}
        self.streamed = tuple(name for name in self.names if name not in self.held)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        """Bytes, as stored, of the fields of the rows this process reads."""
        count = len(self.rows) if self.needed is None else len(self.needed)
        return sum(count * self.reader.fields[name].sample_nbytes for name in self.names)

    @property
    def placement(self) -> str:
        """Where the batches come from, for the run's first line."""
        if not self.held:
            return "streamed"
        mib = sum(held.nbytes for held in self.held.values()) / 2**20
        if not self.streamed:
            return f"in memory: {mib:.1f} MiB"
        return f"{', '.join(self.held)} in memory ({mib:.1f} MiB), {', '.join(self.streamed)} streamed"

    def read(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """{field: (B, ...)} of the split's rows at `positions`, in the stored dtypes, on the host."""
        rows = [self.rows[i] for i in positions.tolist()] if self.streamed else []
        return {
            name: self.held[name].take(positions) if name in self.held else self.reader.read(name, rows)
            for name in self.names
        }

    def batch(self, positions: torch.Tensor, device: torch.device | str) -> Batch:
        return self.on_device(positions, self.read(positions), device)

    def batches(
        self, schedule: Iterable[torch.Tensor], device: torch.device | str, read_ahead: int = 1
    ) -> Iterator[Batch]:
        """The batches of `schedule` (positions per micro-batch), in order; the next `read_ahead` ones are
        read in background threads, in parallel, while the caller trains on this one."""
        with ThreadPoolExecutor(max_workers=max(1, read_ahead), thread_name_prefix="store-reader") as pool:
            pending = deque()  # (positions, future of their values), oldest first
            for positions in schedule:
                pending.append((positions, pool.submit(self.read, positions)))
                if len(pending) > max(1, read_ahead):
                    positions_now, values = pending.popleft()
                    yield self.on_device(positions_now, values.result(), device)
            while pending:
                positions_now, values = pending.popleft()
                yield self.on_device(positions_now, values.result(), device)

    def on_device(self, positions: torch.Tensor, values: dict[str, torch.Tensor], device) -> Batch:
        values = {name: value.to(device).float() for name, value in values.items()}
        cond = {name[len("cond.") :]: value for name, value in values.items() if name.startswith("cond.")}
        fields = {name: value for name, value in values.items() if not name.startswith("cond.")}
        sample_ids = [self.sample_ids[i] for i in positions.tolist()]
        return Batch(fields, nest_conditioning(cond), sample_ids, self.guidance_scale[positions].to(device))


def memory_budget(settings: dict) -> int:
    """Bytes of a split that loader="auto" holds in memory: the teacher's weights, as phase one recorded them."""
    return int(settings.get("teacher_nbytes", MEMORY_LOADER_LIMIT))


def fields_to_hold(
    loader: str, reader, names: tuple[str, ...], rows: list[int], count: int
) -> tuple[str, ...]:
    """The fields held in memory: all (memory), none (stream), or (auto) the cheapest to hold, in
    that order, while their total stays within the budget; each one held is a read less per batch."""
    if loader not in LOADERS:
        raise DistillCacheError(f"unknown --loader {loader!r}; valid: {', '.join(LOADERS)}")
    if loader != "auto":
        return names if loader == "memory" else ()
    costs = {name: held_nbytes(reader, name, rows, count) for name in names}
    budget, held = memory_budget(reader.settings), []
    for name in sorted(names, key=costs.__getitem__):
        if costs[name] > budget:
            break
        budget -= costs[name]
        held.append(name)
    return tuple(held)


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
    """The (batch_size,) row indices of micro-batch `micro_step` of one process."""
    return rows_at_positions(
        num_rows, seed, torch.arange(micro_step * batch_size, (micro_step + 1) * batch_size)
    )


def rows_at_positions(num_rows: int, seed: int, positions: torch.Tensor) -> torch.Tensor:
    """Row indices (into the split) at these stream positions: a fresh permutation per epoch."""
    epochs, slots = positions // num_rows, positions % num_rows
    rows = torch.empty(len(positions), dtype=torch.long)
    for epoch in epochs.unique().tolist():
        permutation = torch.randperm(
            num_rows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        )
        rows[epochs == epoch] = permutation[slots[epochs == epoch]]
    return rows
