"""Minimal training augmentation, as in RF-DETR: horizontal flip with flip pairs and a random crop.

Both work on ``(image (H, W, C) uint8, ImageTargets)`` in pixel coordinates (pixel centres at +0.5, so a flip
maps x to ``W - x`` exactly). The random resize per step is ``Trainer.choice_for_step`` (``trainer.loop.trainer``), applied by
``trainer.data.collate.collate_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from trainer.data.random import WorkerRandom
from trainer.data.schema import DatasetSchema
from trainer.data.targets import ImageTargets


def hflip(
    image: np.ndarray, targets: ImageTargets, flip_permutations: Sequence[Sequence[int]]
) -> tuple[np.ndarray, ImageTargets]:
    """Mirror the image left-right and its targets with it.

    Args:
        flip_permutations: per class, ``flipped[i] = original[perm[i]]`` over that class's keypoints (see
            ``CategorySchema.flip_permutation``); left/right keypoints swap slots.
    """
    width = image.shape[1]
    boxes = targets.boxes.copy()
    boxes[:, 0] = width - targets.boxes[:, 2]
    boxes[:, 2] = width - targets.boxes[:, 0]
    keypoints = targets.keypoints.copy()
    for n, label in enumerate(targets.labels):
        perm = list(flip_permutations[int(label)])
        keypoints[n, : len(perm)] = targets.keypoints[n, perm]
    labelled = keypoints[..., 2] > 0
    keypoints[..., 0] = np.where(labelled, width - keypoints[..., 0], 0.0)
    flipped = np.ascontiguousarray(image[:, ::-1])
    return flipped, replace(targets, boxes=boxes, keypoints=keypoints)


def crop(
    image: np.ndarray, targets: ImageTargets, top: int, left: int, height: int, width: int
) -> tuple[np.ndarray, ImageTargets]:
    """Cut the region ``[top, top + height) x [left, left + width)`` out of the image.

    Boxes are shifted and clipped to the region; instances left with no box area are dropped. Labelled
    keypoints outside the region (x or y outside ``[0, width]`` / ``[0, height]``) become ``v = 0`` with
    coordinates 0: a keypoint cropped out is not findable.
    """
    img_h, img_w = image.shape[:2]
    if not (
        0 <= top
        and 0 <= left
        and height > 0
        and width > 0
        and top + height <= img_h
        and left + width <= img_w
    ):
        raise ValueError(f"crop ({top}, {left}, {height}, {width}) does not fit in a {img_h}x{img_w} image")
    offset = np.array([left, top, left, top], np.float32)
    boxes = targets.boxes - offset
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    keypoints = targets.keypoints.copy()
    keypoints[..., 0] -= left
    keypoints[..., 1] -= top
    inside = (
        (keypoints[..., 0] >= 0)
        & (keypoints[..., 0] <= width)
        & (keypoints[..., 1] >= 0)
        & (keypoints[..., 1] <= height)
    )
    keep_point = (keypoints[..., 2] > 0) & inside
    keypoints[~keep_point] = 0.0
    cropped = replace(targets, boxes=boxes, keypoints=keypoints)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return np.ascontiguousarray(image[top : top + height, left : left + width]), cropped.select(keep)


class TrainAugment:
    """Random horizontal flip (probability ``flip_prob``) then random crop (probability ``crop_prob``).

    The crop keeps a random ``[min_crop_scale, 1]`` fraction of each side at a random position. Draws come
    from the generator given to each call (else one seeded with ``seed``), so runs are reproducible; inside
    ``DataLoader`` workers each worker draws from its own generator (``trainer.data.random``).
    """

    def __init__(
        self,
        schema: DatasetSchema,
        flip_prob: float = 0.5,
        crop_prob: float = 0.5,
        min_crop_scale: float = 0.5,
        seed: int | None = None,
    ) -> None:
        for name, value in (("flip_prob", flip_prob), ("crop_prob", crop_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 < min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale}")
        self.flip_permutations = [c.flip_permutation for c in schema.categories]
        self.flip_prob = flip_prob
        self.crop_prob = crop_prob
        self.min_crop_scale = min_crop_scale
        self.random = WorkerRandom(seed)

    def __call__(
        self, image: np.ndarray, targets: ImageTargets, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, ImageTargets]:
        """Augment one item; ``rng``: this call's own generator (e.g. of ``(seed, epoch, index)``), else the
        process's (``WorkerRandom``: one per DataLoader worker)."""
        rng = rng if rng is not None else self.random.generator
        if rng.random() < self.flip_prob:
            image, targets = hflip(image, targets, self.flip_permutations)
        if rng.random() < self.crop_prob:
            img_h, img_w = image.shape[:2]
            height = max(1, int(round(img_h * rng.uniform(self.min_crop_scale, 1.0))))
            width = max(1, int(round(img_w * rng.uniform(self.min_crop_scale, 1.0))))
            top = int(rng.integers(0, img_h - height + 1))
            left = int(rng.integers(0, img_w - width + 1))
            image, targets = crop(image, targets, top, left, height, width)
        return image, targets
