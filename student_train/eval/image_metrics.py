"""Paired image / latent metrics of eval: per-sample MSE and PSNR, small pure functions.

    mse(student_latents, teacher_latents)                       # [N], any [N, ...] float tensors
    psnr(to_unit_float(student_images), to_unit_float(teacher_images))   # [N] dB, images in [0, 1]

Each returns one value per sample (first axis), so callers can average over any subset.
"""

import numpy as np
import torch


def to_unit_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images [N, H, W, 3] in 0..255 -> float64 [N, H, W, 3] in [0, 1]."""
    return torch.as_tensor(np.asarray(images)).to(torch.float64) / 255.0


def mse(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: [N, ...] x [N, ...] -> [N] (float64)."""
    a, b = torch.as_tensor(a).to(torch.float64), torch.as_tensor(b).to(torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"mse of tensors of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return (a - b).square().flatten(1).mean(dim=1)


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample in dB: 10 log10(range^2 / MSE); +inf where identical."""
    return 10.0 * torch.log10(data_range**2 / mse(a, b))
