"""Model configuration: the architecture hyperparameters that travel with the weights.

Read once at the edge (checkpoint or variant function) and passed to constructors as explicit keywords.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """Architecture and preprocessing of one RF-DETR Keypoint model.

    `num_classes` is the number of class logits. The first `len(num_keypoints_per_class)` classes are
    keypointed; class `c` has `num_keypoints_per_class[c]` keypoints (0 allowed).
    """

    num_classes: int = 2
    num_keypoints_per_class: list[int] = field(default_factory=lambda: [17])
    class_names: list[str] = field(default_factory=list)
    keypoint_names: list[list[str]] = field(default_factory=list)
    skeletons: list[list[tuple[int, int]]] = field(default_factory=list)
    # backbone
    vit_dim: int = 384
    vit_depth: int = 12
    vit_heads: int = 6
    vit_mlp_ratio: float = 4.0
    patch_size: int = 12
    pos_grid: int = 48
    num_windows: int = 2
    out_feature_indexes: list[int] = field(default_factory=lambda: [3, 6, 9, 12])
    # projector / decoder
    hidden_dim: int = 256
    projector_blocks: int = 3
    projector_norm: str = "layer"  # "layer" or "batch" in the projectors' conv blocks
    dec_layers: int = 4
    sa_heads: int = 8
    ca_heads: int = 16
    ca_points: int = 2
    dim_feedforward: int = 2048
    num_queries: int = 100
    group_detr: int = 13
    # keypoint stream: width hidden_dim // keypoint_dim_downscale (projections in and out when > 1; the peer's
    # grouppose_keypoint_dim_downscale), and optional attention across instances per keypoint
    keypoint_dim_downscale: int = 1
    inter_instance_kp_attn: bool = False
    decoder_registers: int = 0  # extra decoder tokens per query group, not read out
    keypoint_cross_attn: bool = True  # the keypoint stream's deformable cross-attention
    # a second projector for the keypoint stream (dual_projector); with dual_projector_kp_only=False the instance
    # stream reads it too (the peer's flags of the same names; the released model: both True)
    dual_projector: bool = True
    dual_projector_kp_only: bool = True
    # preprocessing
    resolution: int = 576
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # inference
    rescore_alpha: float = 0.2
    # post-hoc calibration of the keypoint Gaussians (`rfkp calibrate`): output covariances of keypoint j of
    # keypointed class c are multiplied by covariance_scale[c][j]; empty means 1 everywhere
    covariance_scale: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(self.class_names) < self.num_classes:
            start = len(self.class_names)
            self.class_names = list(self.class_names) + [f"class_{i}" for i in range(start, self.num_classes)]
        n_kp_classes = len(self.num_keypoints_per_class)
        if n_kp_classes > self.num_classes:
            raise ValueError(
                f"{n_kp_classes} keypointed classes but only {self.num_classes} class logits"
            )
        if not self.keypoint_names:
            self.keypoint_names = [[f"kp_{j}" for j in range(k)] for k in self.num_keypoints_per_class]
        if not self.skeletons:
            self.skeletons = [[] for _ in self.num_keypoints_per_class]
        self.skeletons = [[(int(a), int(b)) for a, b in edges] for edges in self.skeletons]
        self.image_mean = tuple(float(v) for v in self.image_mean)  # type: ignore[assignment]
        self.image_std = tuple(float(v) for v in self.image_std)  # type: ignore[assignment]
        for c, (names, k) in enumerate(zip(self.keypoint_names, self.num_keypoints_per_class)):
            if len(names) != k:
                raise ValueError(f"class {c}: {len(names)} keypoint names for {k} keypoints")
        if self.projector_norm not in ("layer", "batch"):
            raise ValueError(f"projector_norm must be 'layer' or 'batch', got {self.projector_norm!r}")
        if self.decoder_registers < 0:
            raise ValueError(f"decoder_registers must be >= 0, got {self.decoder_registers}")
        if self.keypoint_dim_downscale < 1 or self.hidden_dim % self.keypoint_dim_downscale:
            raise ValueError(
                f"keypoint_dim_downscale must be a divisor of hidden_dim {self.hidden_dim}, got {self.keypoint_dim_downscale}"
            )
        self.covariance_scale = [[float(v) for v in row] for row in self.covariance_scale]
        if self.covariance_scale:
            shape = [len(row) for row in self.covariance_scale]
            if shape != list(self.num_keypoints_per_class):
                raise ValueError(
                    f"covariance_scale has rows of lengths {shape}, expected one value per keypoint: "
                    f"{list(self.num_keypoints_per_class)}"
                )
            bad = [v for row in self.covariance_scale for v in row if not (math.isfinite(v) and v > 0)]
            if bad:
                raise ValueError(f"covariance_scale values must be finite and > 0, got {bad[0]}")

    @property
    def max_keypoints(self) -> int:
        return max(self.num_keypoints_per_class, default=0)

    @property
    def total_keypoints(self) -> int:
        return sum(self.num_keypoints_per_class)

    def covariance_scale_table(self) -> list[list[float]] | None:
        """`covariance_scale` padded with 1.0 to (keypointed classes, max_keypoints), or None when unset."""
        if not self.covariance_scale:
            return None
        kmax = self.max_keypoints
        return [row + [1.0] * (kmax - len(row)) for row in self.covariance_scale]

    @property
    def keypoint_dim(self) -> int:
        """Width of the keypoint stream."""
        return self.hidden_dim // self.keypoint_dim_downscale

    @property
    def block_size(self) -> int:
        """Input sides must be multiples of this (patch size x windows)."""
        return self.patch_size * self.num_windows

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skeletons"] = [[list(e) for e in edges] for edges in self.skeletons]
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**data)
