"""Dataset targets, horizontal flip with flip pairs and random crop: image and targets stay consistent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.data

from rfkp.io import load_image
from trainer.data.coco import CocoKeypointDataset
from trainer.data.schema import infer_schema
from trainer.data.targets import COCO_PIXEL_OFFSET, ImageTargets
from trainer.data.transforms import TrainAugment, crop, hflip

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

SCHEMA = infer_schema(
    {
        "categories": [
            {"id": 1, "name": "bird", "keypoints": ["left_wing", "right_wing", "beak"]},
            {"id": 2, "name": "stick", "keypoints": ["top", "bottom"]},
        ]
    }
)


def _scene() -> tuple[np.ndarray, ImageTargets]:
    """A 30x40 image with a unique colour at every labelled keypoint's pixel."""
    keypoints = np.array(
        [
            [[5.5, 4.5, 2], [20.5, 6.5, 1], [12.5, 14.5, 2]],
            [[30.5, 3.5, 2], [33.5, 25.5, 2], [0, 0, 0]],
            [[0, 0, 0], [9.5, 22.5, 2], [3.5, 27.5, 1]],
        ],
        np.float32,
    )
    targets = ImageTargets(
        boxes=np.array([[3, 2, 23, 17], [28, 1, 36, 28], [1, 20, 12, 29]], np.float32),
        labels=np.array([0, 1, 0]),
        keypoints=keypoints,
        image_id=1,
    )
    image = np.zeros((30, 40, 3), np.uint8)
    for n in range(3):
        for k in range(3):
            if keypoints[n, k, 2] > 0:
                image[int(keypoints[n, k, 1]), int(keypoints[n, k, 0])] = (10 + 80 * n, 10 + 60 * k, 255)
    return image, targets


def _markers(image: np.ndarray, targets: ImageTargets) -> dict[tuple[int, int], tuple[int, ...]]:
    out = {}
    for n in range(targets.num_instances):
        for k in range(targets.keypoints.shape[1]):
            x, y, v = targets.keypoints[n, k]
            if v > 0:
                out[(n, k)] = tuple(int(c) for c in image[int(np.floor(y)), int(np.floor(x))])
    return out


def test_hflip_moves_keypoints_with_the_pixels_and_swaps_pairs() -> None:
    image, targets = _scene()
    before = _markers(image, targets)
    flipped_image, flipped = hflip(image, targets, [c.flip_permutation for c in SCHEMA.categories])
    after = _markers(flipped_image, flipped)
    # bird instances: slot 0 (left_wing) now holds what was the right wing, and vice versa.
    assert (
        after[(0, 0)] == before[(0, 1)]
        and after[(0, 1)] == before[(0, 0)]
        and after[(0, 2)] == before[(0, 2)]
    )
    assert after[(2, 0)] == before[(2, 1)]  # a labelled right wing whose left wing is unlabelled
    assert flipped.keypoints[2, 0, 2] == 2 and flipped.keypoints[2, 1, 2] == 0
    assert after[(1, 0)] == before[(1, 0)] and after[(1, 1)] == before[(1, 1)]  # stick: no pairs
    np.testing.assert_array_equal(flipped.keypoints[0, 0], [40 - 20.5, 6.5, 1])  # visibility travels too
    np.testing.assert_array_equal(flipped.boxes[0], [40 - 23, 2, 40 - 3, 17])
    twice_image, twice = hflip(flipped_image, flipped, [c.flip_permutation for c in SCHEMA.categories])
    np.testing.assert_array_equal(twice_image, image)
    np.testing.assert_array_equal(twice.keypoints, targets.keypoints)
    np.testing.assert_array_equal(twice.boxes, targets.boxes)


def test_crop_keeps_pixels_and_makes_cropped_out_keypoints_unfindable() -> None:
    image, targets = _scene()
    before = _markers(image, targets)
    cropped_image, cropped = crop(image, targets, top=3, left=4, height=20, width=23)
    assert cropped_image.shape == (20, 23, 3)
    assert cropped.num_instances == 2  # the stick (x >= 28) lies outside the crop
    np.testing.assert_array_equal(cropped.boxes, [[0, 0, 19, 14], [0, 17, 8, 20]])
    after = _markers(cropped_image, cropped)
    assert after == {
        (0, 0): before[(0, 0)],
        (0, 1): before[(0, 1)],
        (0, 2): before[(0, 2)],
        (1, 1): before[(2, 1)],
    }
    # the third instance's keypoint 2 (y = 27.5) fell outside: not findable, coordinates cleared
    np.testing.assert_array_equal(cropped.keypoints[1, 2], [0, 0, 0])
    with pytest.raises(ValueError, match="does not fit"):
        crop(image, targets, top=20, left=0, height=20, width=5)


def test_train_augment_is_seeded_and_consistent() -> None:
    image, targets = _scene()
    first = TrainAugment(SCHEMA, flip_prob=0.5, crop_prob=1.0, min_crop_scale=0.6, seed=3)
    second = TrainAugment(SCHEMA, flip_prob=0.5, crop_prob=1.0, min_crop_scale=0.6, seed=3)
    for _ in range(5):
        out_a, t_a = first(image, targets)
        out_b, t_b = second(image, targets)
        np.testing.assert_array_equal(out_a, out_b)
        np.testing.assert_array_equal(t_a.keypoints, t_b.keypoints)
        colours = set(_markers(out_a, t_a).values())
        assert colours <= set(_markers(image, targets).values())  # every labelled keypoint sits on its marker
        assert (t_a.boxes[:, 2:] > t_a.boxes[:, :2]).all()
    with pytest.raises(ValueError, match="min_crop_scale"):
        TrainAugment(SCHEMA, min_crop_scale=0.0)


def test_dataset_decodes_grayscale_as_predict_and_offsets_keypoints() -> None:
    root = DATA / "mirror-mouse"
    if not root.is_dir():
        pytest.skip(f"shared test data not found at {root}")
    dataset = CocoKeypointDataset(root / "val.json", root / "images", flip_pairs={"*": [(0, 3), (1, 2)]})
    image, targets = dataset[0]
    info = dataset.images[0]
    np.testing.assert_array_equal(image, load_image(root / "images" / info["file_name"]))
    assert image.shape == (406, 396, 3) and (image[..., 0] == image[..., 2]).all()
    anns = [a for a in dataset.coco["annotations"] if a["image_id"] == info["id"]]
    assert targets.num_instances == len(anns) == 2
    n = [dataset.schema.class_index(a["category_id"]) for a in anns].index(targets.labels[0])
    raw = np.asarray(anns[n]["keypoints"], np.float32).reshape(-1, 3)
    labelled = raw[:, 2] > 0
    np.testing.assert_allclose(targets.keypoints[0, labelled, :2], raw[labelled, :2] + COCO_PIXEL_OFFSET)
    assert (targets.keypoints[0, ~labelled] == 0).all()
    x, y, w, h = anns[n]["bbox"]
    np.testing.assert_allclose(targets.boxes[0], [x, y, min(x + w, 396), min(y + h, 406)], rtol=1e-6)


class _AugmentedScenes(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.augment = TrainAugment(SCHEMA, flip_prob=0.5, crop_prob=1.0, min_crop_scale=0.3, seed=0)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        image, targets = self.augment(*_scene())
        return torch.tensor([image.shape[0], image.shape[1], targets.num_instances])


def test_dataloader_workers_draw_different_augmentations() -> None:
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_AugmentedScenes(), batch_size=None, num_workers=2)
    draws = [item.tolist() for item in loader]  # items alternate between worker 0 and worker 1
    assert draws[0::2] != draws[1::2]
