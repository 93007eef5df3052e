"""Shared checks of the export tests: run a graph on ONNX Runtime, pair rows of two detection sets, compare
detections in input pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rfkp import RFDETRKeypoint
from rfkp.detections import KeypointDetections
from rfkp.export import INPUT_NAME, OUTPUT_NAMES
from rfkp.variants import tiny

COORD_TOL = 1e-3  # pixels
SCORE_TOL = 1e-5
COV_RTOL = 1e-4  # relative to the largest entry of each 2x2 covariance


def random_model(seed: int = 0, **overrides: object) -> RFDETRKeypoint:
    """A `tiny` model (two keypointed classes, K = 7 and 4, plus one class without keypoints) with every
    parameter random: the training initialisation zeroes the heads and the attention logits, which would make
    every box a square of one size and every keypoint Gaussian the same, hiding wiring mistakes."""
    params = {"num_classes": 3, "num_keypoints_per_class": [7, 4], **overrides}
    model = RFDETRKeypoint.from_config(tiny(**params), device="cpu", seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def session(model: str | Path | Any, threads: int = 2) -> Any:
    """An ONNX Runtime CPU session (skips the test without onnxruntime)."""
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(sess: Any, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels.numpy()})))


def as_numpy(outputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy() for name, t in zip(OUTPUT_NAMES, outputs)}


def image_rows(out: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {name: value[i] for name, value in out.items()}


def in_input_pixels(dets: KeypointDetections, resolution: int) -> dict[str, np.ndarray]:
    """A `predict()` result mapped from source pixels to the pixels of the R x R network input."""
    h, w = dets.image_size
    s = np.array([resolution / w, resolution / h], dtype=np.float64)
    return {
        "scores": dets.score.astype(np.float64),
        "labels": dets.class_id,
        "boxes": dets.xyxy * np.tile(s, 2),
        "keypoints": dets.keypoints * s,
        "covariances": dets.covariance * s[:, None] * s[None, :],
        "findable": dets.findable,
        "visible": dets.visible,
    }


def match_rows(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> np.ndarray:
    """Index of `out`'s row holding the same detection as each row of `ref` (same label, nearest box and
    keypoints). Runtimes may order near-tied class probabilities differently; the detections must agree."""
    cost = np.abs(ref["boxes"][:, None, :] - out["boxes"][None, :, :]).max(-1)
    n_ref, n_out = len(ref["labels"]), len(out["labels"])
    kp = np.abs(ref["keypoints"][:, None] - out["keypoints"][None]).reshape(n_ref, n_out, -1)
    kp = np.where(np.isnan(kp), 0.0, kp).max(-1)
    cost = np.maximum(cost, kp)
    cost[ref["labels"][:, None] != out["labels"][None, :]] = np.inf
    rows = cost.argmin(1)
    assert np.isfinite(cost[np.arange(len(rows)), rows]).all(), "a detection has no counterpart of its class"
    assert len(set(rows.tolist())) == len(rows), "two detections paired with the same row"
    return rows


def assert_same_detections(ref: dict[str, np.ndarray], out: dict[str, np.ndarray], *, ordered: bool) -> None:
    """Same detections: rows in the same order (`ordered`), or paired by `match_rows`; coordinates within
    COORD_TOL px, scores and probabilities within SCORE_TOL, covariances within COV_RTOL, NaN in the same
    slots."""
    rows = np.arange(len(ref["labels"])) if ordered else match_rows(ref, out)
    got = {name: value[rows] for name, value in out.items()}
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    for name, tol in (("boxes", COORD_TOL), ("keypoints", COORD_TOL), ("scores", SCORE_TOL),
                      ("findable", SCORE_TOL), ("visible", SCORE_TOL)):  # fmt: skip
        np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(ref[name]), err_msg=name)
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=tol, equal_nan=True, err_msg=name)
    cov_ref, cov = ref["covariances"], got["covariances"]
    np.testing.assert_array_equal(np.isnan(cov), np.isnan(cov_ref))
    scale = np.abs(cov_ref).max(axis=(-1, -2), keepdims=True)  # NaN for inactive slots
    np.testing.assert_allclose(cov / scale, cov_ref / scale, rtol=0, atol=COV_RTOL, equal_nan=True)
