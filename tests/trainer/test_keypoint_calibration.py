"""Calibration: coverage of the predicted 1/2/3-sigma ellipses, visible vs occluded, reliability plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.evaluation.calibration import CalibrationResult, keypoint_errors, nominal_coverage
from trainer.evaluation.coco_eval import evaluate_keypoints
from trainer.evaluation.plots import reliability_plot

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _random_covariances(rng: np.random.Generator, n: int) -> np.ndarray:
    angle = rng.uniform(0, np.pi, n)
    rot = np.stack(
        [np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2
    )
    scales = np.zeros((n, 2, 2))
    scales[:, 0, 0] = rng.uniform(0.5, 9.0, n) ** 2
    scales[:, 1, 1] = rng.uniform(0.5, 9.0, n) ** 2
    return rot @ scales @ rot.transpose(0, 2, 1)


def test_nominal_coverage_of_a_2d_gaussian() -> None:
    assert [round(100 * nominal_coverage(k), 1) for k in (1, 2, 3)] == [39.3, 86.5, 98.9]


def test_gaussian_errors_reach_nominal_coverage() -> None:
    """Errors drawn from the predicted (rotated, anisotropic) covariances cover 39.3/86.5/98.9 %."""
    rng = np.random.default_rng(0)
    num_pairs, k = 2000, 5
    cov = _random_covariances(rng, num_pairs * k).reshape(num_pairs, k, 2, 2)
    errors = np.einsum("pkij,pkj->pki", np.linalg.cholesky(cov), rng.standard_normal((num_pairs, k, 2)))
    gt_anns, dt_anns = {}, {}
    for p in range(num_pairs):
        dt_xy = rng.uniform(0, 500, (k, 2))
        vis = np.where(np.arange(k) < 3, 2.0, 1.0)
        gt_anns[p + 1] = {
            "image_id": p // 4,
            "category_id": 1,
            "keypoints": np.concatenate([dt_xy + errors[p], vis[:, None]], 1).reshape(-1).tolist()
        }
        dt_anns[p + 1] = {
            "keypoints": np.concatenate([dt_xy, np.ones((k, 1))], 1).reshape(-1).tolist(),
            "keypoint_covariance": cov[p].tolist(),
        }
    errors_found = keypoint_errors([(p + 1, p + 1) for p in range(num_pairs)], gt_anns, dt_anns)
    m, v = errors_found.distance, errors_found.visibility
    assert errors_found.keypoint.tolist()[:k] == list(range(k)) and set(errors_found.image_id.tolist()) == set(
        range(num_pairs // 4 + (num_pairs % 4 > 0))
    )
    result = CalibrationResult(visible=m[v == 2], occluded=m[v == 1])
    assert result.visible.size == 6000 and result.occluded.size == 4000
    for kind in ("visible", "occluded"):
        for n_sigma, fraction in result.coverage(kind).items():
            assert fraction == pytest.approx(nominal_coverage(n_sigma), abs=0.02)


def test_calibration_through_the_coco_evaluation_is_exact() -> None:
    """Detections placed at chosen Mahalanobis radii: the reported coverage counts them exactly."""
    path = DATA / "coco-sample" / "person_keypoints.json"
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path}")
    coco = json.loads(path.read_text())
    rng = np.random.default_rng(1)
    radii_visible = [0.5, 1.5, 2.5, 3.5]
    rows, expected_visible, n_occluded = [], [], 0
    for ann in coco["annotations"]:
        gt = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        cov = _random_covariances(rng, len(gt)) * 0.01  # sigmas of 0.05 to 0.9 px: every detection matches
        chol = np.linalg.cholesky(cov)
        direction = rng.standard_normal((len(gt), 2))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        radius = np.zeros(len(gt))
        for i, vis in enumerate(gt[:, 2]):
            if vis == 2:
                radius[i] = radii_visible[len(expected_visible) % 4]
                expected_visible.append(radius[i])
            elif vis == 1:
                radius[i] = 0.5
                n_occluded += 1
        dt_xy = gt[:, :2] - radius[:, None] * np.einsum("kij,kj->ki", chol, direction)
        rows.append(
            {
                "image_id": ann["image_id"],
                "category_id": 1,
                "keypoints": np.concatenate([dt_xy, np.ones((len(gt), 1))], 1).reshape(-1).tolist(),
                "score": 0.9,
                "keypoint_covariance": cov.tolist(),
            }
        )
    result = evaluate_keypoints(coco, rows).calibration
    assert result is not None
    assert result.visible.size == len(expected_visible) and result.occluded.size == n_occluded > 0
    np.testing.assert_allclose(np.sort(result.visible), np.sort(np.square(expected_visible)), rtol=1e-6)
    expected = {k: float(np.mean(np.asarray(expected_visible) <= k)) for k in (1, 2, 3)}
    assert result.coverage("visible") == pytest.approx(expected)
    assert result.coverage("occluded") == {1: 1.0, 2: 1.0, 3: 1.0}


def test_reliability_curve_and_plot(tmp_path: Path) -> None:
    result = CalibrationResult(visible=np.array([0.1, 0.5, 2.0, 5.0]), occluded=np.zeros(0))
    levels = [1 - math.exp(-0.06), 1 - math.exp(-1.5), 0.999]  # radii^2 0.12, 3.0, 13.8
    np.testing.assert_allclose(result.reliability("visible", levels), [0.25, 0.75, 1.0])
    assert np.isnan(result.reliability("occluded", levels)).all()
    assert math.isnan(result.coverage("occluded")[1])
    out = reliability_plot(result, tmp_path / "plots" / "reliability.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (500, 500)
    with pytest.raises(ValueError, match="kind must be"):
        result.coverage("hidden")
