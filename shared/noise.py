"""Initial noise: one torch.Generator per sample, seeded from the row (EDM's StackedRandomGenerator).

A sample's noise depends only on its seed and the latent shape: never on batch size, rank, device
or resume. It is drawn in float32 on the CPU, then moved to the teacher's device and dtype.
`keyed_seed("noised", sample_id)` seeds any other per-sample draw the same way (phase one's noised
points, phase two's SampleRandom).
"""

import hashlib
from collections.abc import Sequence

import torch


def initial_noise(
    seeds: Sequence[int], latent_shape: Sequence[int], device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """Unit-variance Gaussian noise, shape (len(seeds), C, H, W), one generator per seed."""
    noise = [
        torch.randn(tuple(latent_shape), generator=torch.Generator("cpu").manual_seed(int(seed)))
        for seed in seeds
    ]
    return torch.stack(noise).to(device=device, dtype=dtype)


def init_noise_sigma(scheduler) -> float:
    """The factor diffusers pipelines scale given `latents=` by before step 0 (flow matching: 1)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def keyed_seed(*keys) -> int:
    """A 63-bit seed from the keys (e.g. a purpose and a sample id): the same keys, the same seed,
    in any process, batch or run."""
    digest = hashlib.sha256("/".join(map(str, keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
