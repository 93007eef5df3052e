"""A COCO keypoint dataset: validated annotations, images decoded as ``predict()`` decodes them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rfkp.io import load_image
from trainer.data.flip_pairs import FlipPairSpec
from trainer.data.schema import DatasetSchema, infer_schema
from trainer.data.targets import COCO_PIXEL_OFFSET, ImageTargets
from trainer.data.validate import check_image_files, check_image_sizes, load_coco_json, validate_coco

Transform = Callable[[np.ndarray, ImageTargets], tuple[np.ndarray, ImageTargets]]


def annotation_targets(
    annotations: Sequence[Mapping[str, Any]], schema: DatasetSchema, image: Mapping[str, Any]
) -> ImageTargets:
    """Targets of one image from its (validated) annotations.

    Crowd annotations (``iscrowd == 1``) are left out; boxes are clipped to the image and instances whose
    clipped box has no area are left out. Labelled keypoints get ``COCO_PIXEL_OFFSET`` added.
    """
    width, height = image["width"], image["height"]
    k_max = schema.max_keypoints
    boxes, labels, keypoints = [], [], []
    for ann in annotations:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        box = np.array([min(x, width), min(y, height), min(x + w, width), min(y + h, height)], np.float32)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        kps = np.zeros((k_max, 3), np.float32)
        raw = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
        kps[: raw.shape[0]] = raw
        labelled = kps[:, 2] > 0
        kps[labelled, :2] += COCO_PIXEL_OFFSET
        kps[~labelled, :2] = 0.0
        boxes.append(box)
        labels.append(schema.class_index(ann["category_id"]))
        keypoints.append(kps)
    return ImageTargets(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        keypoints=np.asarray(keypoints, np.float32).reshape(-1, k_max, 3),
        image_id=int(image["id"]),
    )


class CocoKeypointDataset:
    """Images and instance targets of a COCO keypoint file.

    Validates the whole file, the presence of every image file and its size (from its header) at construction,
    so a bad dataset fails before training starts. Images are decoded with ``rfkp.io.load_image`` (grayscale,
    palette, RGBA, 16-bit converted to RGB exactly as ``predict()`` does).

    Item ``i``: ``(image (H, W, 3) uint8, ImageTargets)`` in pixel coordinates, after ``transform`` if given.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        images_dir: str | Path,
        transform: Transform | None = None,
        flip_pairs: Mapping[int | str, FlipPairSpec] | None = None,
        side_tokens: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.images_dir = Path(images_dir)
        self.transform = transform
        source = self.annotation_file.name
        self.coco = load_coco_json(self.annotation_file)
        self.schema = infer_schema(self.coco, source, flip_pairs=flip_pairs, side_tokens=side_tokens)
        validate_coco(self.coco, self.schema, source)
        check_image_files(self.coco, self.images_dir, source)
        check_image_sizes(self.coco, self.images_dir, source)
        self.images = sorted(self.coco["images"], key=lambda im: im["id"])
        self._annotations: dict[int, list[Mapping[str, Any]]] = {im["id"]: [] for im in self.images}
        for ann in self.coco["annotations"]:
            self._annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, index: int) -> ImageTargets:
        """The targets of item ``index`` without decoding the image or applying the transform."""
        image = self.images[index]
        return annotation_targets(self._annotations[image["id"]], self.schema, image)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ImageTargets]:
        info = self.images[index]
        try:
            image = load_image(self.images_dir / info["file_name"])
        except ValueError as err:  # not decodable past its header (truncated, corrupt)
            raise ValueError(f"{self.annotation_file.name}: image id {info['id']}: {err}") from err
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"{self.annotation_file.name}: image id {info['id']}: file {info['file_name']!r} is "
                f"{image.shape[1]}x{image.shape[0]} but the annotation says {info['width']}x{info['height']}"
            )
        targets = self.targets(index)
        if self.transform is not None:
            image, targets = self.transform(image, targets)
        return image, targets
