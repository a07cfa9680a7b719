"""Small decoded previews: the pipeline's own images (B, 3, H, W) in [0, 1] -> uint8 (B, h, w, 3)."""

import torch
import torch.nn.functional as F


def preview_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longer side at most `size` pixels, aspect kept, never upscaled."""
    scale = min(1.0, size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_previews(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (B, 3, H, W) float in [0, 1] -> uint8 (B, h, w, 3), antialiased down to `size`."""
    height, width = preview_shape(images.shape[-2], images.shape[-1], size)
    images = images.float()
    if (height, width) != tuple(images.shape[-2:]):
        images = F.interpolate(
            images, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
