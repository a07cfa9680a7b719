"""Per-sample randomness: one generator per (run seed, step, sample id), as EDM's
StackedRandomGenerator does per image, so a draw never depends on batch size, rank or a resume.
`step` is one number for the batch or one per sample: the training loop passes each sample's epoch
(training/data_order.py), so a sample's draws in an epoch are the same however the global batch is
split into processes and micro-batches.

    random = SampleRandom(seed=0, step=12, sample_ids=["a1", "b2"], device)
    random = SampleRandom(seed=0, step=[3, 4], sample_ids=["a1", "b2"], device)   # per-sample steps
    w = random.uniform(3.0, 15.0)          # (B,)
    n = random.randint(0, 50)              # (B,) int64
    z = random.normal((4, 8, 8))           # (B, 4, 8, 8)
"""

from collections.abc import Sequence

import torch

from shared.noise import keyed_seed


class SampleRandom:
    def __init__(
        self, seed: int, step: int | Sequence[int], sample_ids: list[str], device: torch.device | str = "cpu"
    ):
        self.device = torch.device(device)
        steps = [step] * len(sample_ids) if isinstance(step, int) else [int(s) for s in step]
        assert len(steps) == len(sample_ids), "one step per sample id"
        self.generators = [
            torch.Generator().manual_seed(keyed_seed(seed, s, sid)) for s, sid in zip(steps, sample_ids)
        ]

    def uniform(self, low: float, high: float) -> torch.Tensor:
        draws = torch.stack([torch.rand((), generator=g) for g in self.generators])
        return (low + (high - low) * draws).to(self.device)

    def randint(self, low: int, high: int) -> torch.Tensor:
        draws = [torch.randint(low, high, (), generator=g) for g in self.generators]
        return torch.stack(draws).to(self.device)

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(self.device)
