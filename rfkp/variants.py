"""Named model variants: functions returning a `ModelConfig` (one dict of hyperparameters each)."""

from __future__ import annotations

from typing import Any

from rfkp.config import ModelConfig

COCO_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
# COCO skeleton, 0-based
COCO_SKELETON = [
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
]  # fmt: skip


def preview(**overrides: Any) -> ModelConfig:
    """The released RF-DETR Keypoint Preview architecture (ViT-S/12, 576 px, 4 decoder layers)."""
    params: dict[str, Any] = dict(num_classes=2, num_keypoints_per_class=[17])
    if overrides.get("num_keypoints_per_class", [17]) == [17]:  # the COCO person schema
        params.update(class_names=["person"], keypoint_names=[COCO_KEYPOINT_NAMES], skeletons=[COCO_SKELETON])
    params.update(overrides)
    return ModelConfig(**params)


def nano(**overrides: Any) -> ModelConfig:
    """A faster sibling: 384 px input with 16 px patches, 2 decoder layers, same backbone width."""
    params: dict[str, Any] = dict(resolution=384, patch_size=16, pos_grid=24, dec_layers=2)
    params.update(overrides)
    return preview(**params)


def tiny(**overrides: Any) -> ModelConfig:
    """A very small model for tests and CPU learning checks (not for real accuracy)."""
    params: dict[str, Any] = dict(
        vit_dim=96, vit_depth=4, vit_heads=3, out_feature_indexes=[2, 4], patch_size=16, pos_grid=16,
        hidden_dim=64, projector_blocks=1, dec_layers=2, sa_heads=4, ca_heads=4, dim_feedforward=128,
        num_queries=20, group_detr=2, resolution=256,
    )  # fmt: skip
    params.update(overrides)
    return preview(**params)


def small(**overrides: Any) -> ModelConfig:
    """A compact model for training from scratch on CPU or on small datasets (5 M parameters, 256 px)."""
    params: dict[str, Any] = dict(
        vit_dim=192, vit_depth=6, vit_heads=3, out_feature_indexes=[2, 4, 6], patch_size=16, pos_grid=16,
        hidden_dim=128, projector_blocks=1, dec_layers=3, sa_heads=4, ca_heads=8, dim_feedforward=512,
        num_queries=20, group_detr=4, resolution=256,
    )  # fmt: skip
    params.update(overrides)
    return preview(**params)


VARIANTS = {"preview": preview, "nano": nano, "small": small, "tiny": tiny}
