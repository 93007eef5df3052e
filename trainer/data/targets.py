"""Per-image instance targets in pixel coordinates, as the dataset and the augmentations pass them around.

Conventions: pixel coordinates of the image, origin top-left, x right, y down, pixel centres at +0.5 (a COCO
keypoint stored as pixel index ``i`` becomes ``i + 0.5``, see ``COCO_PIXEL_OFFSET``). Keypoints with ``v == 0``
have coordinates 0 and carry no position.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from rfkp.config import COCO_PIXEL_OFFSET

__all__ = ["COCO_PIXEL_OFFSET", "ImageTargets"]


@dataclass(frozen=True)
class ImageTargets:
    """Instances of one image.

    Attributes:
        boxes: (N, 4) float32 xyxy pixels.
        labels: (N,) int64 class indices (category order of the schema).
        keypoints: (N, K, 3) float32 ``(x, y, v)``, K = max keypoints over classes; slots past a class's own
            keypoint count are zero; v in {0, 1, 2} (0 not labelled, 1 labelled but occluded, 2 visible).
        image_id: the COCO image id.
    """

    boxes: np.ndarray
    labels: np.ndarray
    keypoints: np.ndarray
    image_id: int

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.shape != (n, 4) or self.labels.shape != (n,) or self.keypoints.ndim != 3:
            raise ValueError(
                f"inconsistent targets: boxes {self.boxes.shape}, labels {self.labels.shape}, "
                f"keypoints {self.keypoints.shape}"
            )
        if self.keypoints.shape[0] != n or self.keypoints.shape[2] != 3:
            raise ValueError(f"keypoints must be (N={n}, K, 3), got {self.keypoints.shape}")

    @property
    def num_instances(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray) -> ImageTargets:
        """The instances where the boolean ``keep`` (N,) is True."""
        return replace(self, boxes=self.boxes[keep], labels=self.labels[keep], keypoints=self.keypoints[keep])
