"""Model configuration: the architecture hyperparameters that travel with the weights.

Read once at the edge (checkpoint or variant function) and passed to constructors as explicit keywords.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

PROJECTOR_NORMS = ("layer", "batch")  # LayerNorm or BatchNorm in the projectors' conv blocks
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# largest network input side accepted, a sanity cap against typos, not a memory guarantee: the backbone's global
# attention holds ((R / patch) ** 2) ** 2 scores per head, already about 20 GB in fp32 at 4096 with patch 16 and
# one window, so memory can run out well below it (more so with small patch sizes)
MAX_RESOLUTION = 4096
#: COCO keypoint annotations are pixel indices (the centre of the top-left pixel is (0, 0)); rfkp's coordinates put
#: pixel centres at +0.5, so ``rfkp train`` adds this on loading and COCO result rows subtract it again.
COCO_PIXEL_OFFSET = 0.5


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int if it is an integer >= 1 (numpy integers too, not bools); else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_resolution(resolution: int, block: int) -> int:
    """`resolution` if it is a valid network input side: a multiple of `block` (patch size x windows), at most
    `MAX_RESOLUTION`; else a ValueError saying which."""
    if resolution % block:
        raise ValueError(f"resolution {resolution} is not a multiple of patch_size x num_windows = {block}")
    if resolution > MAX_RESOLUTION:
        raise ValueError(f"resolution {resolution} is above the largest supported input side {MAX_RESOLUTION}")
    return resolution


def placeholder_keypoint_names(k: int) -> list[str]:
    """The names of ``k`` keypoints whose checkpoint names none (an rfdetr checkpoint): ``kp_0``, ``kp_1``, ..."""
    return [f"kp_{j}" for j in range(k)]


@dataclass
class ModelConfig:
    """Architecture and preprocessing of one RF-DETR Keypoint model.

    `num_classes` is the number of class logits. The first `len(num_keypoints_per_class)` classes are
    keypointed; class `c` has `num_keypoints_per_class[c]` keypoints (0 allowed).
    """

    num_classes: int = 2
    num_keypoints_per_class: list[int] = field(default_factory=lambda: [17])
    class_names: list[str] = field(default_factory=list)
    # the COCO category id of each class (what results files and pycocotools use); empty: the class index
    category_ids: list[int] = field(default_factory=list)
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
    # what this network's keypoint outputs exceed COCO keypoint coordinates by, as it was trained: 0.5 for rfkp
    # (pixel centres at +0.5), 0.0 for rfdetr checkpoints (trained on the COCO coordinates as stored); COCO
    # result rows subtract it
    coco_keypoint_offset: float = COCO_PIXEL_OFFSET

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # JSON and --set give lists for tuples and ints for floats
            setattr(self, f.name, _conform(getattr(self, f.name), str(f.type), f.name))
        self._check_sizes()
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if len(self.class_names) < self.num_classes:
            start = len(self.class_names)
            self.class_names = list(self.class_names) + [f"class_{i}" for i in range(start, self.num_classes)]
        if self.category_ids and (
            len(self.category_ids) != self.num_classes or len(set(self.category_ids)) != self.num_classes
        ):
            raise ValueError(
                f"category_ids must name {self.num_classes} distinct ids, one per class, got {self.category_ids}"
            )
        n_kp_classes = len(self.num_keypoints_per_class)
        if n_kp_classes > self.num_classes:
            raise ValueError(f"{n_kp_classes} keypointed classes but only {self.num_classes} class logits")
        if not self.keypoint_names:
            self.keypoint_names = [placeholder_keypoint_names(k) for k in self.num_keypoints_per_class]
        if not self.skeletons:
            self.skeletons = [[] for _ in self.num_keypoints_per_class]
        if len(self.keypoint_names) != n_kp_classes or len(self.skeletons) != n_kp_classes:
            raise ValueError(
                f"{n_kp_classes} keypointed classes but {len(self.keypoint_names)} keypoint name lists and "
                f"{len(self.skeletons)} skeletons"
            )
        for c, (names, k) in enumerate(zip(self.keypoint_names, self.num_keypoints_per_class)):
            if len(names) != k:
                raise ValueError(f"class {c}: {len(names)} keypoint names for {k} keypoints")
            bad_edges = [e for e in self.skeletons[c] if not (0 <= e[0] < k and 0 <= e[1] < k)]
            if bad_edges:
                raise ValueError(
                    f"class {c}: skeleton edge {bad_edges[0]} names a keypoint outside 0..{k - 1}"
                )
        if self.projector_norm not in PROJECTOR_NORMS:
            raise ValueError(f"projector_norm must be 'layer' or 'batch', got {self.projector_norm!r}")
        if self.decoder_registers < 0:
            raise ValueError(f"decoder_registers must be >= 0, got {self.decoder_registers}")
        if self.keypoint_dim_downscale < 1 or self.hidden_dim % self.keypoint_dim_downscale:
            raise ValueError(
                f"keypoint_dim_downscale must be a divisor of hidden_dim {self.hidden_dim}, got {self.keypoint_dim_downscale}"
            )
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

    def _check_sizes(self) -> None:
        positive = ("num_classes", "vit_dim", "vit_depth", "vit_heads", "patch_size", "pos_grid", "num_windows",
                    "hidden_dim", "projector_blocks", "dec_layers", "sa_heads", "ca_heads", "ca_points",
                    "dim_feedforward", "num_queries", "group_detr", "resolution")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for dim, heads in (("vit_dim", "vit_heads"), ("hidden_dim", "sa_heads"), ("hidden_dim", "ca_heads")):
            if getattr(self, dim) % getattr(self, heads):
                raise ValueError(
                    f"{dim} {getattr(self, dim)} is not divisible by {heads} {getattr(self, heads)}"
                )
        shrink = self.keypoint_dim_downscale
        if shrink >= 1 and self.hidden_dim % shrink == 0:  # else refused below, with its own message
            for heads in ("sa_heads", "ca_heads"):  # the keypoint stream runs heads // downscale (at least 1)
                kp_heads = max(1, getattr(self, heads) // shrink)
                if self.keypoint_dim % kp_heads:
                    raise ValueError(
                        f"keypoint_dim_downscale {shrink}: the keypoint stream's width {self.keypoint_dim} is not "
                        f"divisible by its {kp_heads} heads ({heads} {getattr(self, heads)} // {shrink})"
                    )
        if any(k < 0 for k in self.num_keypoints_per_class):
            raise ValueError(f"num_keypoints_per_class must be >= 0, got {self.num_keypoints_per_class}")
        if not self.out_feature_indexes or not all(
            1 <= i <= self.vit_depth for i in self.out_feature_indexes
        ):
            raise ValueError(
                f"out_feature_indexes must lie in 1..vit_depth {self.vit_depth}, got {self.out_feature_indexes}"
            )
        check_resolution(self.resolution, self.block_size)
        if not (math.isfinite(self.vit_mlp_ratio) and self.vit_mlp_ratio > 0):
            raise ValueError(f"vit_mlp_ratio must be finite and > 0, got {self.vit_mlp_ratio}")
        if not (math.isfinite(self.coco_keypoint_offset) and abs(self.coco_keypoint_offset) <= 1):
            raise ValueError(f"coco_keypoint_offset must be a finite number of pixels in [-1, 1], got "
                             f"{self.coco_keypoint_offset}")
        if not (math.isfinite(self.rescore_alpha) and self.rescore_alpha >= 0):
            raise ValueError(f"rescore_alpha must be finite and >= 0, got {self.rescore_alpha}")
        if not all(math.isfinite(v) for v in self.image_mean) or not all(
            math.isfinite(v) and v > 0 for v in self.image_std
        ):
            raise ValueError(
                f"image_mean must be finite and image_std finite and > 0, got {self.image_mean}, {self.image_std}"
            )

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
        if not isinstance(data, dict):
            raise ValueError(
                f"a model config is a mapping of field names to values, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**data)


def _conform(value: Any, annotation: str, where: str) -> Any:
    """`value` checked against a field annotation (int, float, str, bool, list[...], tuple[...]) and converted
    where JSON loses the type: lists become tuples, ints become floats. bool is never taken for an int.

    Raises:
        ValueError: naming the field (and the position inside it) and what was expected.
    """
    annotation = annotation.replace(" ", "")
    if annotation in ("int", "float", "str", "bool"):
        ok = {
            "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
            "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
        }[annotation]
        if not ok:
            raise ValueError(
                f"config field {where}: expected {annotation}, got {value!r} ({type(value).__name__})"
            )
        if annotation == "float":
            try:
                return float(value)
            except OverflowError:
                raise ValueError(f"config field {where}: {value!r:.40} is too large for a float") from None
        return int(value) if annotation == "int" else value
    outer, inner = annotation.split("[", 1)
    inner = inner[:-1]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"config field {where}: expected a list, got {value!r} ({type(value).__name__})")
    if outer == "list":
        return [_conform(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    parts = _split_top_level(inner)
    if len(value) != len(parts):
        raise ValueError(
            f"config field {where}: expected {len(parts)} values, got {len(value)}: {list(value)}"
        )
    return tuple(_conform(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, parts)))


def _split_top_level(inner: str) -> list[str]:
    """'int,list[int]' -> ['int', 'list[int]'] (commas inside brackets do not split)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    return parts + [inner[start:]]
