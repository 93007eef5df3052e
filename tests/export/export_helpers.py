"""Shared checks of the export tests: run a graph on ONNX Runtime, pair rows of two detection sets, compare
detections in input pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rfkp import RFDETRKeypoint
from rfkp.export import INPUT_NAME, OUTPUT_NAMES
from rfkp.export.compare import in_input_pixels, match_rows  # noqa: F401 - used by the tests
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
