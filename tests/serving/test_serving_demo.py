"""The served quick start: a server on free ports, the bundled sample image over gRPC, a saved result."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")

import json
from pathlib import Path

import numpy as np
from serving_helpers import REPO, require_triton

from rfkp.api import RFDETRKeypoint
from rfkp.detections import KeypointDetections
from rfkp.serving.demo import serve_and_predict

SAMPLE = REPO / "rfkp" / "assets" / "sample_mouse.png"


def test_serve_and_predict_sample(tiny_model: RFDETRKeypoint, tiny_weights: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    require_triton()
    if not SAMPLE.is_file():
        pytest.skip(f"bundled sample image missing: {SAMPLE}")
    dets = serve_and_predict(SAMPLE, tmp_path / "out", weights=tiny_weights, threshold=0.0)
    printed = capsys.readouterr().out
    assert "ready on gRPC 127.0.0.1:" in printed and f"{len(dets)} detections" in printed
    saved = KeypointDetections.from_dict(json.loads((tmp_path / "out" / "detections.json").read_text()))
    local = tiny_model.predict(SAMPLE, threshold=0.0)
    assert len(saved) == len(local) > 0 and saved.image_size == local.image_size
    np.testing.assert_allclose(saved.xyxy, local.xyxy, atol=1e-3)
    np.testing.assert_allclose(saved.keypoints, local.keypoints, atol=1e-3, equal_nan=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["detections.json"]  # no server folder left


def test_missing_image_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image not found"):
        serve_and_predict(tmp_path / "none.png", tmp_path / "out")
