"""Compare an exported graph's outputs with ``predict()``: map detections to input pixels, pair rows, measure.

Runtimes may order near-tied class probabilities differently (ONNX Runtime's sigmoid differs from torch's in
the last bits), so rows are paired by content before differences are taken.
"""

from __future__ import annotations

import numpy as np

from rfkp.detections import KeypointDetections


def in_input_pixels(dets: KeypointDetections, resolution: int) -> dict[str, np.ndarray]:
    """A `predict()` result mapped from source pixels to the pixels of the R x R network input, keyed like the
    exported outputs."""
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
    keypoints). Raises ValueError when a detection has no counterpart or two share one."""
    cost = np.abs(ref["boxes"][:, None, :] - out["boxes"][None, :, :]).max(-1)
    n_ref, n_out = len(ref["labels"]), len(out["labels"])
    kp = np.abs(ref["keypoints"][:, None] - out["keypoints"][None]).reshape(n_ref, n_out, -1)
    kp = np.where(np.isnan(kp), 0.0, kp).max(-1)
    cost = np.maximum(cost, kp)
    cost[ref["labels"][:, None] != out["labels"][None, :]] = np.inf
    rows = cost.argmin(1)
    if not np.isfinite(cost[np.arange(len(rows)), rows]).all():
        raise ValueError("a detection has no counterpart of its class")
    if len(set(rows.tolist())) != len(rows):
        raise ValueError("two detections paired with the same row")
    return rows


def max_differences(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> dict[str, float]:
    """Largest differences after pairing rows: absolute for boxes/keypoints (px) and probabilities, relative to
    each covariance's largest entry for covariances; plus how many rows came in another order."""
    rows = match_rows(ref, out)
    got = {name: value[rows] for name, value in out.items()}
    diffs = {
        name: float(np.nanmax(np.abs(got[name].astype(np.float64) - ref[name].astype(np.float64))))
        for name in ("boxes", "keypoints", "scores", "findable", "visible")
    }
    scale = np.abs(ref["covariances"]).max(axis=(-1, -2), keepdims=True)
    diffs["covariances_relative"] = float(np.nanmax(np.abs(got["covariances"] - ref["covariances"]) / scale))
    diffs["rows_reordered"] = int((rows != np.arange(len(rows))).sum())
    diffs["labels_differ"] = int((got["labels"] != ref["labels"]).sum())
    return diffs
