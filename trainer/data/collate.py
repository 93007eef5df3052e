"""Batching with a batch-level random resize: one resolution per batch, drawn from a list.

Images are resized to ``R x R`` and normalised with the model's mean/std by
``rfkp.preprocess.normalize_batch``: the resize and normalisation ``RFDETRKeypoint.preprocess`` applies at
inference through ``prepare_batch`` (bilinear, no antialias, [0, 1] pixels). Targets become the layout the matcher and losses read (normalised, so they do
not depend on ``R``):

- ``labels`` (N,) int64 class indices;
- ``boxes`` (N, 4) float32 ``(cx, cy, w, h)`` divided by the image (W, H);
- ``keypoints`` (N, K, 3) float32 ``(x / W, y / H, v)``, ``v`` in {0, 1, 2}; unlabelled slots are 0;
- ``image_id`` int and ``orig_size`` (2,) int64 ``(H, W)`` of the (augmented) image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rfkp.io import to_tensor
from rfkp.preprocess import normalize_batch
from trainer.data.random import WorkerRandom
from trainer.data.targets import ImageTargets


@dataclass
class Batch:
    """``images`` (B, 3, R, R) float32 normalised; ``targets`` one dict per image (see module docstring)."""

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor | int]]


def normalize_targets(targets: ImageTargets, height: int, width: int) -> dict[str, torch.Tensor | int]:
    """Pixel ``ImageTargets`` -> the normalised target dict of one image of size ``height x width``."""
    scale = np.array([width, height, width, height], np.float32)
    xyxy = targets.boxes / scale
    cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    keypoints = targets.keypoints.copy()
    keypoints[..., 0] /= width
    keypoints[..., 1] /= height
    return {
        "labels": torch.from_numpy(targets.labels.astype(np.int64)),
        "boxes": torch.from_numpy(cxcywh.astype(np.float32)),
        "keypoints": torch.from_numpy(keypoints.astype(np.float32)),
        "image_id": int(targets.image_id),
        "orig_size": torch.tensor([height, width], dtype=torch.int64),
    }


class BatchCollator:
    """``collate_fn`` drawing one resolution per batch from ``resolutions``.

    Every resolution must be a positive multiple of ``block_size`` (patch size x windows of the model). Draws
    are seeded by ``seed``; ``DataLoader`` workers each draw from their own generator (``trainer.data.random``).
    """

    def __init__(
        self,
        resolutions: Sequence[int],
        image_mean: Sequence[float],
        image_std: Sequence[float],
        block_size: int = 1,
        seed: int | None = None,
    ) -> None:
        if not resolutions:
            raise ValueError("resolutions must not be empty")
        bad = [r for r in resolutions if r <= 0 or r % block_size]
        if bad:
            raise ValueError(f"resolutions {bad} are not positive multiples of the block size {block_size}")
        self.resolutions = list(resolutions)
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)
        self.random = WorkerRandom(seed)

    def __call__(self, samples: Sequence[tuple[np.ndarray, ImageTargets]]) -> Batch:
        resolution = int(self.random.generator.choice(self.resolutions))
        return collate_at(samples, resolution, self.image_mean, self.image_std)


def collate_at(
    samples: Sequence[tuple[np.ndarray, ImageTargets]],
    resolution: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> Batch:
    """Samples resized and normalised to one ``resolution x resolution`` batch, with normalised targets."""
    images = normalize_batch([to_tensor(image) for image, _ in samples], resolution, image_mean, image_std)
    targets = [normalize_targets(t, image.shape[0], image.shape[1]) for image, t in samples]
    return Batch(images=images, targets=targets)
