"""`rfkp predict` and `rfkp demo` end to end (real files, in-process main)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rfkp import RFDETRKeypoint
from rfkp.cli.main import main
from rfkp.variants import tiny


def test_predict_writes_pictures_and_json(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(), device="cpu").save_checkpoint(weights)
    img = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "out"
    rc = main(["predict", str(img), "--weights", str(weights), "--threshold", "0.0", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "detections.json").read_text())
    assert str(img) in data and len(data[str(img)]["score"]) == 40  # 20 queries x 2 classes
    assert Image.open(out / "frame_keypoints.png").size == (80, 60)


def test_predict_reports_a_missing_image(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(), device="cpu").save_checkpoint(weights)
    rc = main(["predict", str(tmp_path / "nope.jpg"), "--weights", str(weights), "--out", str(tmp_path)])
    assert rc == 1
    assert "nope.jpg" in capsys.readouterr().err


def test_demo_runs_on_the_bundled_sample(tmp_path: Path) -> None:
    assert main(["demo", "--local", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sample_keypoints.png").exists()
    assert json.loads((tmp_path / "sample_detections.json").read_text())["image_size"] == [406, 396]
