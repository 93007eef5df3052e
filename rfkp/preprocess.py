"""Image -> network input: RGB in [0, 1], bilinear resize (no antialias), mean/std normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rfkp.io import MAX_PIXELS, to_tensor


def _resize(img: torch.Tensor, size: tuple[int, int], device: torch.device | str | None) -> torch.Tensor:
    img = img.to(device=device, dtype=torch.float32)
    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=False)[0]


def normalize_batch(
    images: Sequence[torch.Tensor],
    resolution: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """images: (3, H_i, W_i) float in [0, 1] -> (B, 3, h, w) normalised, resized to `resolution`."""
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    return _normalize(torch.stack([_resize(img, size, device) for img in images]), mean, std)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def prepare_batch(
    images: Sequence[object],
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of any accepted kind (``rfkp.io.to_tensor``) -> the network input, one image at a time: only one
    full-size image is held in memory at once (resizing as ``normalize_batch``). Returns (x (B, 3, R, R) normalised, source sizes (B, 2) (H, W)).

    Raises:
        What ``to_tensor`` raises; for a ValueError or TypeError of a list of several images, the message
        says which image (0-based).
    """
    size = (resolution, resolution)
    resized, sizes = [], []
    for i in range(len(images)):
        image = images[i]  # by index: a lazy sequence (``rfkp.serving.payload.EncodedImages``) decodes it now
        try:
            tensor = to_tensor(image, max_pixels=max_pixels)
        except (ValueError, TypeError) as exc:
            if len(images) == 1:
                raise
            located = type(exc)(f"image {i} of {len(images)}: {exc}")
            located.image_index = i  # callers that know the images better (dataset ids) name them from it
            raise located from exc
        sizes.append((tensor.shape[1], tensor.shape[2]))
        resized.append(_resize(tensor, size, device))
        del image, tensor  # freed before the next image is taken
    return _normalize(torch.stack(resized), mean, std), torch.tensor(sizes, dtype=torch.long)
