"""Post-hoc calibration of the keypoint Gaussians: one covariance factor per class (or per keypoint).

A model trained by likelihood on few images often ends over-confident on new ones: its ellipses are too small.
Multiplying a predicted covariance by ``s`` divides every squared Mahalanobis distance ``m`` by ``s``, so the
factor that puts exactly the nominal fraction ``p = 1 - exp(-n^2 / 2)`` of held-out keypoints inside the
``n``-sigma ellipse is ``s = quantile_p(m) / n^2``. Quantile matching, not the Gaussian maximum-likelihood
``mean(m) / 2``: a few gross errors (a paw swapped with its neighbour) would inflate every ellipse under the
mean, while the quantile matches the ellipse people look at (2 sigma by default) and ignores the tail beyond.

Factors are fitted hierarchically: all keypoints ("global"), the keypoints of each class ("class"), or each
keypoint of each class ("keypoint"); a group with fewer than ``min_count`` keypoints takes its parent's factor.
``cross_validate`` measures the calibration on images the factors were not fitted on (folds over images).
Scores, boxes and keypoint positions do not change; only the covariances do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.evaluation.calibration import KeypointErrors, nominal_coverage

FIT_MODES = ("global", "class", "keypoint")


@dataclass(frozen=True)
class ScaleFit:
    """Fitted factors for the keypointed classes, in class order.

    Attributes:
        scales: ``scales[c][j]`` multiplies the covariance of keypoint j of class c.
        counts: keypoints each factor was fitted on (of its own group, or of the parent it fell back to).
        sources: "keypoint", "class" or "global": the group each factor was fitted on.
    """

    scales: list[list[float]]
    counts: list[list[int]]
    sources: list[list[str]]


def quantile_scale(distances: np.ndarray, level: float = 2.0) -> float:
    """The factor that brings the fraction ``nominal_coverage(level)`` of ``distances`` inside ``level`` sigma."""
    if distances.size == 0:
        raise ValueError("no keypoint errors to fit a covariance factor on")
    if not level > 0:
        raise ValueError(f"level must be > 0 (sigmas), got {level}")
    scale = float(np.quantile(distances, nominal_coverage(level))) / (level * level)
    # a zero quantile (at least that share of the errors exactly zero) would collapse the ellipses: keep them
    return scale if scale > 0 else 1.0


def fit_covariance_scale(
    errors: KeypointErrors,
    category_ids: Sequence[int],
    num_keypoints: Sequence[int],
    *,
    by: str = "class",
    level: float = 2.0,
    kind: str = "visible",
    min_count: int = 20,
) -> ScaleFit:
    """Fit factors on ``errors`` (distances under the covariances the model gives now).

    Args:
        category_ids: the COCO category of each keypointed class, in class order.
        num_keypoints: K of each keypointed class.
        by: "global", "class" or "keypoint".
        level: the n-sigma ellipse whose coverage is made nominal.
        kind: which keypoints to fit on: "visible", "occluded" or "all".
        min_count: smallest group fitted on its own; smaller groups take their parent's factor.

    Raises:
        ValueError: bad arguments, or no keypoints of ``kind`` at all.
    """
    if by not in FIT_MODES:
        raise ValueError(f"by must be one of {FIT_MODES}, got {by!r}")
    if len(category_ids) != len(num_keypoints):
        raise ValueError(f"{len(category_ids)} category ids for {len(num_keypoints)} keypointed classes")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    rows = errors.kind(kind)
    if not len(rows):
        raise ValueError(f"no matched {kind} keypoints to fit a covariance factor on (are there detections?)")
    global_scale = quantile_scale(rows.distance, level)
    scales, counts, sources = [], [], []
    for category, k in zip(category_ids, num_keypoints):
        in_class = rows.select(rows.category_id == category)
        class_scale, class_count, class_source = global_scale, len(rows), "global"
        if by != "global" and len(in_class) >= min_count:
            class_scale, class_count, class_source = quantile_scale(in_class.distance, level), len(in_class), "class"
        row_scales, row_counts, row_sources = [], [], []
        for j in range(k):
            own = in_class.select(in_class.keypoint == j)
            if by == "keypoint" and len(own) >= min_count:
                row_scales.append(quantile_scale(own.distance, level))
                row_counts.append(len(own))
                row_sources.append("keypoint")
            else:
                row_scales.append(class_scale)
                row_counts.append(class_count)
                row_sources.append(class_source)
        scales.append(row_scales)
        counts.append(row_counts)
        sources.append(row_sources)
    return ScaleFit(scales, counts, sources)


def apply_covariance_scale(
    errors: KeypointErrors, scales: Sequence[Sequence[float]], category_ids: Sequence[int]
) -> KeypointErrors:
    """The errors as they would be with every covariance multiplied by its factor (distances divided by it)."""
    factor = np.ones(len(errors))
    for c, category in enumerate(category_ids):
        in_class = errors.category_id == category
        table = np.asarray(scales[c], np.float64)
        factor[in_class] = table[errors.keypoint[in_class]]
    return errors.with_distance(errors.distance / factor)


def image_folds(image_ids: np.ndarray, folds: int) -> list[np.ndarray]:
    """Sorted unique image ids dealt round-robin into ``folds`` groups (0 or more than the images: one image per
    fold, i.e. leave-one-image-out)."""
    unique = np.unique(image_ids)
    n = unique.size if folds <= 0 or folds > unique.size else folds
    return [unique[i::n] for i in range(n)]


def cross_validate(
    errors: KeypointErrors,
    category_ids: Sequence[int],
    num_keypoints: Sequence[int],
    *,
    folds: int = 0,
    **fit_options: object,
) -> KeypointErrors:
    """Every row rescaled by factors fitted without its image's fold: an honest estimate of the calibration
    the fitted factors give on new images. ``fit_options`` go to ``fit_covariance_scale``.

    Raises:
        ValueError: fewer than two images, or a fold whose complement has nothing to fit on.
    """
    groups = image_folds(errors.image_id, folds)
    if len(groups) < 2:
        raise ValueError("cross-validation needs keypoints on at least two images")
    parts = []
    for held_out in groups:
        test = np.isin(errors.image_id, held_out)
        fit = fit_covariance_scale(errors.select(~test), category_ids, num_keypoints, **fit_options)  # type: ignore[arg-type]
        parts.append(apply_covariance_scale(errors.select(test), fit.scales, category_ids))
    return KeypointErrors.concatenate(parts)
