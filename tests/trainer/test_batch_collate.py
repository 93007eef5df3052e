"""Batch-level random resize and the normalised target layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rfkp.api import RFDETRKeypoint
from rfkp.config import IMAGENET_MEAN, IMAGENET_STD
from rfkp.variants import tiny
from trainer.data.coco import CocoKeypointDataset
from trainer.data.collate import BatchCollator, normalize_targets
from trainer.data.targets import ImageTargets


def _sample(height: int, width: int, seed: int) -> tuple[np.ndarray, ImageTargets]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    targets = ImageTargets(
        boxes=np.array([[10, 20, 50, 40]], np.float32),
        labels=np.array([1]),
        keypoints=np.array([[[30, 25, 2], [0, 0, 0]]], np.float32),
        image_id=seed,
    )
    return image, targets


def test_targets_are_normalised_cxcywh_and_xy() -> None:
    image, targets = _sample(50, 100, 0)
    out = normalize_targets(targets, 50, 100)
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.3, 0.6, 0.4, 0.4]]))
    torch.testing.assert_close(out["keypoints"], torch.tensor([[[0.3, 0.5, 2.0], [0.0, 0.0, 0.0]]]))
    assert out["labels"].dtype == torch.int64 and out["labels"].tolist() == [1]
    assert out["orig_size"].tolist() == [50, 100] and out["image_id"] == 0


def test_one_resolution_per_batch_drawn_from_the_list() -> None:
    collate = BatchCollator([24, 48, 72], IMAGENET_MEAN, IMAGENET_STD, block_size=24, seed=0)
    seen = set()
    for step in range(12):
        batch = collate([_sample(50, 100, step), _sample(64, 32, step + 100)])
        res = batch.images.shape[-1]
        assert batch.images.shape == (2, 3, res, res) and batch.images.dtype == torch.float32
        seen.add(res)
        assert [t["orig_size"].tolist() for t in batch.targets] == [[50, 100], [64, 32]]
    assert seen == {24, 48, 72}


def test_uniform_grey_image_normalises_to_the_expected_constant() -> None:
    image = np.full((30, 20, 3), 128, np.uint8)
    targets = ImageTargets(
        np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros((0, 2, 3), np.float32), 0
    )
    batch = BatchCollator([16], IMAGENET_MEAN, IMAGENET_STD)([(image, targets)])
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch.images[0], expected[:, None, None].expand(3, 16, 16))
    assert batch.targets[0]["boxes"].shape == (0, 4) and batch.targets[0]["keypoints"].shape == (0, 2, 3)


def test_bad_resolutions_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"resolutions \[50\] are not positive multiples of the block size 24"
    ):
        BatchCollator([48, 50], IMAGENET_MEAN, IMAGENET_STD, block_size=24)
    with pytest.raises(ValueError, match="must not be empty"):
        BatchCollator([], IMAGENET_MEAN, IMAGENET_STD)


def test_batch_images_equal_what_predict_feeds_the_network() -> None:
    """Dataset decoding plus collate give exactly ``RFDETRKeypoint.preprocess``'s input (grayscale PNG)."""
    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mirror-mouse"
    if not root.is_dir():
        pytest.skip(f"shared test data not found at {root}")
    dataset = CocoKeypointDataset(root / "val.json", root / "images")
    model = RFDETRKeypoint.from_config(tiny(), device="cpu")
    batch = BatchCollator([96], model.config.image_mean, model.config.image_std)([dataset[0], dataset[1]])
    paths = [root / "images" / info["file_name"] for info in dataset.images[:2]]
    expected, sizes = model.preprocess(paths, resolution=96)
    torch.testing.assert_close(batch.images, expected, rtol=0, atol=0)
    assert sizes.tolist() == [t["orig_size"].tolist() for t in batch.targets]
