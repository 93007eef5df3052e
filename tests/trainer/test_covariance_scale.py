"""Post-hoc covariance factors: the quantile fit, its fall-backs, cross-validation over images."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.evaluation.calibration import KeypointErrors, nominal_coverage
from trainer.evaluation.covariance_scale import (
    apply_covariance_scale,
    cross_validate,
    fit_covariance_scale,
    image_folds,
    quantile_scale,
)


def _errors(rng: np.random.Generator, true_scale: dict[tuple[int, int], float], per_group: int,
            images: int = 10) -> KeypointErrors:  # fmt: skip
    """Distances of errors drawn with covariance true_scale * C, measured under C: true_scale * chi2(2)."""
    parts = []
    for (category, keypoint), scale in true_scale.items():
        m = scale * rng.chisquare(2, per_group)
        ones = np.ones(per_group, np.int64)
        parts.append(KeypointErrors(m, 2 * ones, rng.integers(0, images, per_group), category * ones, keypoint * ones))
    return KeypointErrors.concatenate(parts)


def test_quantile_scale_recovers_the_factor_and_makes_the_ellipse_nominal() -> None:
    rng = np.random.default_rng(0)
    m = 6.0 * rng.chisquare(2, 40000)
    s = quantile_scale(m, level=2.0)
    assert s == pytest.approx(6.0, rel=0.03)
    assert np.mean(m / s <= 4.0) == pytest.approx(nominal_coverage(2), abs=1e-3)
    # the 1-sigma level fits the 39.3 % quantile instead
    assert np.mean(m / quantile_scale(m, level=1.0) <= 1.0) == pytest.approx(nominal_coverage(1), abs=1e-3)
    # a few gross errors do not move it much, unlike the Gaussian ML estimate mean(m) / 2
    spoiled = np.concatenate([m, np.full(400, 1e6)])
    assert quantile_scale(spoiled) == pytest.approx(6.0, rel=0.06)
    assert np.mean(spoiled) / 2 > 1000
    assert quantile_scale(np.zeros(5)) == 1.0
    with pytest.raises(ValueError, match="no keypoint errors"):
        quantile_scale(np.zeros(0))
    with pytest.raises(ValueError, match="level must be > 0"):
        quantile_scale(m, level=0.0)


def test_fit_by_class_and_keypoint_with_fallbacks() -> None:
    rng = np.random.default_rng(1)
    truth = {(1, 0): 2.0, (1, 1): 2.0, (1, 2): 8.0, (2, 0): 0.5}
    errors = _errors(rng, truth, per_group=5000)
    errors = KeypointErrors.concatenate([errors, _errors(rng, {(2, 1): 50.0}, per_group=5)])  # too few alone

    by_class = fit_covariance_scale(errors, [1, 2], [3, 2], by="class", min_count=20)
    class1 = quantile_scale(errors.select(errors.category_id == 1).distance)
    assert by_class.scales[0] == [class1] * 3 and by_class.sources[0] == ["class"] * 3
    assert by_class.counts[0] == [15000] * 3

    by_kp = fit_covariance_scale(errors, [1, 2], [3, 2], by="keypoint", min_count=20)
    assert by_kp.scales[0] == pytest.approx([2.0, 2.0, 8.0], rel=0.05)
    assert by_kp.sources[1] == ["keypoint", "class"]  # 5 rows < min_count: the class factor
    assert by_kp.scales[1][0] == pytest.approx(0.5, rel=0.05)
    assert by_kp.scales[1][1] == quantile_scale(errors.select(errors.category_id == 2).distance)

    by_global = fit_covariance_scale(errors, [1, 2], [3, 2], by="global")
    assert {s for row in by_global.scales for s in row} == {quantile_scale(errors.distance)}
    assert by_global.sources == [["global"] * 3, ["global"] * 2]

    # a class without enough rows falls back to the global factor; a class without any rows too
    few = fit_covariance_scale(errors, [1, 2, 3], [3, 2, 4], by="keypoint", min_count=6000)
    assert few.sources == [["class"] * 3, ["global"] * 2, ["global"] * 4]
    assert few.scales[2] == [quantile_scale(errors.distance)] * 4


def test_fit_rejects_bad_arguments() -> None:
    errors = _errors(np.random.default_rng(2), {(1, 0): 1.0}, per_group=50)
    with pytest.raises(ValueError, match="by must be one of"):
        fit_covariance_scale(errors, [1], [1], by="image")
    with pytest.raises(ValueError, match="1 category ids for 2"):
        fit_covariance_scale(errors, [1], [1, 2])
    with pytest.raises(ValueError, match="no matched occluded keypoints"):
        fit_covariance_scale(errors, [1], [1], kind="occluded")
    with pytest.raises(ValueError, match="min_count"):
        fit_covariance_scale(errors, [1], [1], min_count=0)


def test_apply_divides_each_distance_by_its_own_factor() -> None:
    errors = KeypointErrors(
        distance=np.array([8.0, 8.0, 8.0, 8.0]), visibility=np.array([2, 2, 1, 2]), image_id=np.array([0, 0, 1, 1]),
        category_id=np.array([1, 1, 2, 7]), keypoint=np.array([0, 1, 0, 0]),
    )  # fmt: skip
    scaled = apply_covariance_scale(errors, [[2.0, 4.0], [8.0]], [1, 2])
    np.testing.assert_array_equal(scaled.distance, [4.0, 2.0, 1.0, 8.0])  # category 7 is not keypointed: kept
    np.testing.assert_array_equal(scaled.keypoint, errors.keypoint)


def test_image_folds() -> None:
    ids = np.array([5, 3, 3, 9, 1])
    assert [f.tolist() for f in image_folds(ids, 0)] == [[1], [3], [5], [9]]
    assert [f.tolist() for f in image_folds(ids, 2)] == [[1, 5], [3, 9]]
    assert len(image_folds(ids, 10)) == 4


def test_cross_validation_is_fitted_without_the_measured_image() -> None:
    rng = np.random.default_rng(3)
    errors = _errors(rng, {(1, 0): 5.0}, per_group=3000, images=12)
    crossed = cross_validate(errors, [1], [1], folds=0, by="class", min_count=1)
    assert len(crossed) == len(errors)
    assert np.mean(crossed.distance <= 4.0) == pytest.approx(nominal_coverage(2), abs=0.02)
    # one image whose errors are 100x larger than the rest: its held-out factor comes from the other images
    odd = errors.with_distance(np.where(errors.image_id == 0, 100 * errors.distance, errors.distance))
    crossed = cross_validate(odd, [1], [1], folds=0, by="class", min_count=1)
    on_odd = crossed.select(crossed.image_id == 0)
    assert np.mean(on_odd.distance <= 4.0) < 0.2
    with pytest.raises(ValueError, match="at least two images"):
        cross_validate(errors.select(errors.image_id == 0), [1], [1])
