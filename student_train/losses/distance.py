"""Per-sample distances between predictions and targets, (B, ...) x (B, ...) -> (B,).

l2: mean squared error. huber: the pseudo-Huber metric sqrt(d^2 + c^2) - c of Song & Dhariwal 2023
("Improved techniques for training consistency models"), per element as the diffusers LCM scripts
compute it (huber_c = 0.001 there).
"""

import torch

from shared.errors import DistillCacheError

DISTANCES = ("l2", "huber")


class Distance:
    def __init__(self, kind: str = "l2", huber_c: float = 0.001):
        if kind not in DISTANCES:
            raise DistillCacheError(f"unknown --loss {kind!r}; valid: {', '.join(DISTANCES)}")
        self.kind = kind
        self.huber_c = huber_c

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        difference = (prediction.float() - target.float()).flatten(1)  # (B, D)
        if self.kind == "l2":
            return difference.square().mean(dim=1)
        return (torch.sqrt(difference.square() + self.huber_c**2) - self.huber_c).mean(dim=1)
