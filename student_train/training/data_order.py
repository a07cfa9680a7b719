"""The global data order of a training run, and each process's share of it.

A run reads one endless stream of the split's rows: stream position p = 0, 1, 2, ... is slot p % N
of epoch e = p // N, whose permutation of the N rows is drawn from (seed, e) alone
(`data.batches.rows_at_positions`). Update k trains on positions [k G, (k + 1) G) of the stream,
with G = batch_size x grad_accum x processes, the global batch; micro-batch j of process r takes
the batch_size positions that start at k G + (j P + r) B. Hence:

- The samples of an update depend on G only, not on how G is split into processes and
  micro-batches. One process with batch 2B, one with batch B and grad_accum 2, and two processes
  with batch B all train on the same rows. Every micro-batch has B samples and each takes the mean
  of its per-sample losses; accelerate divides by grad_accum and DDP averages the processes'
  gradients. The gradient is therefore the mean over the global batch in every layout, equal
  within float rounding (tests/test_training_processes.py).
- A process reads only its own positions. Within an update, and within an epoch, these are
  disjoint from the other processes' positions. The memory loader keeps only the rows that this
  process will read (`rows_read`).
- The per-sample draws are seeded by (seed, epoch, sample id) (`epochs`, passed to `SampleRandom`).
  So a sample's draws in an epoch do not depend on batch size, process count or a resume.
- A resume can continue on another number of processes if G stays the same (checkpoints.py checks
  it): the stream goes on at position k G.

    order = DataOrder(num_rows=len(data), seed=0, batch_size=4, grad_accum=1, num_processes=2, rank=1)
    positions = order.micro_batch_positions(update=3, micro=0)    # (4,) stream positions
    rows = order.rows(positions)                                   # (4,) indices into the split
    epochs = order.epochs(positions)                               # (4,) each sample's epoch
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from student_train.data.batches import rows_at_positions


@dataclass(frozen=True)
class DataOrder:
    num_rows: int
    seed: int
    batch_size: int
    grad_accum: int
    num_processes: int
    rank: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.num_processes

    def micro_batch_positions(self, update: int, micro: int) -> torch.Tensor:
        """(batch_size,) stream positions of this process's micro-batch `micro` of update `update`."""
        first = update * self.global_batch + (micro * self.num_processes + self.rank) * self.batch_size
        return torch.arange(first, first + self.batch_size)

    def schedule(self, start_update: int, end_update: int) -> Iterator[torch.Tensor]:
        """This process's micro-batches of updates [start_update, end_update), in loop order."""
        for update in range(start_update, end_update):
            for micro in range(self.grad_accum):
                yield self.micro_batch_positions(update, micro)

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """Indices into the split of the samples at these stream positions."""
        return rows_at_positions(self.num_rows, self.seed, positions)

    def epochs(self, positions: torch.Tensor) -> list[int]:
        return (positions // self.num_rows).tolist()

    def rows_read(self, start_update: int, end_update: int) -> list[int]:
        """Every split index this process reads in updates [start_update, end_update), sorted."""
        positions = list(self.schedule(start_update, end_update))
        if not positions:
            return []
        return sorted(set(self.rows(torch.cat(positions)).tolist()))
