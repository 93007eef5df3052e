"""Image -> network input: RGB in [0, 1], bilinear resize (no antialias), mean/std normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rfkp.io import to_tensor


def normalize_batch(
    images: Sequence[torch.Tensor],
    resolution: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """images: (3, H_i, W_i) float in [0, 1] -> (B, 3, h, w) normalised, resized to `resolution`."""
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    batch = []
    for img in images:
        img = img.to(device=device, dtype=torch.float32)
        batch.append(F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0])
    x = torch.stack(batch)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def load_batch(images: Sequence[object]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Any accepted image inputs -> list of (3, H, W) float tensors and their (B, 2) (H, W) sizes."""
    tensors = [to_tensor(img) for img in images]
    sizes = torch.tensor([[t.shape[1], t.shape[2]] for t in tensors], dtype=torch.long)
    return tensors, sizes
