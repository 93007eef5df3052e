"""Calibration of the predicted keypoint Gaussians.

For every ground-truth keypoint labelled in an annotation matched to a detection (the matches of COCO's
evaluation at OKS 0.5, area range "all", the top ``maxDets`` detections per image), the squared Mahalanobis
distance ``m = d^T C^-1 d`` of the error ``d = gt - predicted`` (pixels) under the predicted covariance ``C``
(pixels squared). For a calibrated 2-D Gaussian, ``P(m <= k^2) = 1 - exp(-k^2 / 2)``: 39.3 %, 86.5 % and
98.9 % of keypoints lie inside the 1-, 2- and 3-sigma ellipses. Visible (v == 2) and occluded (v == 1)
keypoints are reported separately.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rfkp.detections import COVARIANCE_KEY

SIGMA_LEVELS = (1, 2, 3)


def nominal_coverage(n_sigma: float) -> float:
    """Probability mass of a 2-D Gaussian inside its ``n_sigma`` ellipse: ``1 - exp(-n^2 / 2)``."""
    return 1.0 - math.exp(-0.5 * n_sigma * n_sigma)


@dataclass(frozen=True)
class CalibrationResult:
    """Squared Mahalanobis distances of matched ground-truth keypoints.

    Attributes:
        visible: (n_visible,) for v == 2 keypoints.
        occluded: (n_occluded,) for v == 1 keypoints.
    """

    visible: np.ndarray
    occluded: np.ndarray

    def distances(self, kind: str) -> np.ndarray:
        if kind == "visible":
            return self.visible
        if kind == "occluded":
            return self.occluded
        if kind == "all":
            return np.concatenate([self.visible, self.occluded])
        raise ValueError(f"kind must be 'visible', 'occluded' or 'all', got {kind!r}")

    def coverage(self, kind: str, n_sigmas: Sequence[float] = SIGMA_LEVELS) -> dict[float, float]:
        """Fraction of keypoints inside each ``n``-sigma ellipse; NaN when there are no keypoints of ``kind``."""
        m = self.distances(kind)
        return {n: float(np.mean(m <= n * n)) if m.size else math.nan for n in n_sigmas}

    def reliability(self, kind: str, levels: Sequence[float]) -> np.ndarray:
        """Empirical coverage of the central ellipses of nominal probability ``levels`` (each in (0, 1))."""
        m = self.distances(kind)
        radii_sq = -2.0 * np.log1p(-np.asarray(levels, dtype=np.float64))
        if not m.size:
            return np.full(len(levels), math.nan)
        return (m[None, :] <= radii_sq[:, None]).mean(axis=1)


def matched_pairs(evaluator: Any, oks_threshold: float = 0.5) -> list[tuple[int, int]]:
    """``(detection id, ground-truth id)`` matches of an evaluated pycocotools ``COCOeval``.

    Only matches to non-ignored ground truth (not crowd, with labelled keypoints) in area range "all". Ids are
    the evaluator's: pycocotools marks "no match" with 0, so ground-truth ids must be > 0, as
    ``coco_eval.ground_truth_for_eval`` numbers them (1..N, the file's id kept beside).
    """
    params = evaluator.params
    hits = np.flatnonzero(np.isclose(params.iouThrs, oks_threshold))
    if not hits.size:
        raise ValueError(
            f"OKS threshold {oks_threshold} is not one of the evaluation's {list(params.iouThrs)}"
        )
    t = int(hits[0])
    pairs: list[tuple[int, int]] = []
    for entry in evaluator.evalImgs:
        if entry is None or list(entry["aRng"]) != list(params.areaRng[0]):
            continue
        for d, dt_id in enumerate(entry["dtIds"]):
            gt_id = int(entry["dtMatches"][t, d])
            if gt_id > 0 and not entry["dtIgnore"][t, d]:
                pairs.append((int(dt_id), gt_id))
    return pairs


@dataclass(frozen=True)
class KeypointErrors:
    """One row per labelled ground-truth keypoint of a matched (detection, ground truth) pair.

    Attributes:
        distance: squared Mahalanobis distance of the error under the predicted covariance (float64).
        visibility: the ground truth's v, 1 (occluded) or 2 (visible).
        image_id / category_id: of the ground truth.
        keypoint: the keypoint's index in its category's keypoint list.
    """

    distance: np.ndarray
    visibility: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    keypoint: np.ndarray

    def __len__(self) -> int:
        return int(self.distance.size)

    @classmethod
    def empty(cls) -> KeypointErrors:
        ints = np.zeros(0, np.int64)
        return cls(np.zeros(0), ints, ints, ints, ints)

    @classmethod
    def concatenate(cls, parts: Sequence[KeypointErrors]) -> KeypointErrors:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in _ERROR_FIELDS))

    def select(self, mask: np.ndarray) -> KeypointErrors:
        return KeypointErrors(*(getattr(self, name)[mask] for name in _ERROR_FIELDS))

    def kind(self, kind: str) -> KeypointErrors:
        """The rows of ``kind``: "visible", "occluded" or "all"."""
        if kind == "all":
            return self
        if kind in ("visible", "occluded"):
            return self.select(self.visibility == (2 if kind == "visible" else 1))
        raise ValueError(f"kind must be 'visible', 'occluded' or 'all', got {kind!r}")

    def with_distance(self, distance: np.ndarray) -> KeypointErrors:
        return KeypointErrors(np.asarray(distance, np.float64), self.visibility, self.image_id, self.category_id,
                              self.keypoint)  # fmt: skip

    def calibration(self) -> CalibrationResult:
        return calibration_from_distances(self.distance, self.visibility)


_ERROR_FIELDS = ("distance", "visibility", "image_id", "category_id", "keypoint")


def keypoint_errors(
    pairs: Sequence[tuple[int, int]], gt_anns: dict[int, Any], dt_anns: dict[int, Any]
) -> KeypointErrors:
    """The labelled keypoints of matched pairs with their squared Mahalanobis distances.

    Args:
        gt_anns / dt_anns: annotations by id; detections carry ``keypoint_covariance`` (K, 2, 2) pixels^2.
    """
    parts = []
    for dt_id, gt_id in pairs:
        gt_ann = gt_anns[gt_id]
        gt = np.asarray(gt_ann["keypoints"], np.float64).reshape(-1, 3)
        dt = np.asarray(dt_anns[dt_id]["keypoints"], np.float64).reshape(-1, 3)
        cov = np.asarray(dt_anns[dt_id][COVARIANCE_KEY], np.float64)
        labelled = np.flatnonzero(gt[:, 2] > 0)
        d = gt[labelled, :2] - dt[labelled, :2]
        inv = np.linalg.inv(cov[labelled])
        n = labelled.size
        parts.append(
            KeypointErrors(
                distance=np.einsum("ni,nij,nj->n", d, inv, d),
                visibility=gt[labelled, 2].astype(np.int64),
                image_id=np.full(n, int(gt_ann["image_id"]), np.int64),
                category_id=np.full(n, int(gt_ann["category_id"]), np.int64),
                keypoint=labelled.astype(np.int64),
            )
        )
    return KeypointErrors.concatenate(parts)


def calibration_from_distances(m: np.ndarray, v: np.ndarray) -> CalibrationResult:
    return CalibrationResult(visible=m[v == 2], occluded=m[v == 1])
