"""The CI learning test: `rfkp train` on a synthetic two-class dataset (K = 3 and K = 5, occluded keypoints,
objects over the border), then `rfkp eval` on held-out images.

Stated targets (the measured figures are in benchmarks/results/learning_synthetic_cpu.json, written by
benchmarks/learning_synthetic.py with the same recipe): OKS AP >= 0.15; 2-sigma coverage of visible keypoints in [0.70, 0.995] (ideal 0.865: the ellipses
are neither collapsed nor uninformatively wide); the mean training loss of the last five epochs below half
of the first five.
"""

from __future__ import annotations

import json

import pytest

from rfkp.cli.main import main
from trainer.data.synthetic import LEARNING_EPOCHS, LEARNING_OPTIONS, learning_check_data


@pytest.mark.slow
def test_tiny_model_learns_keypoints_with_calibrated_gaussians(tmp_path, capsys) -> None:
    train_json, val_json = learning_check_data(tmp_path)
    run = tmp_path / "run"
    status = main(["train", "--data", str(train_json), "--images", str(tmp_path / "images"), "--val", str(val_json),
                   "--out", str(run), *LEARNING_OPTIONS])
    assert status == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == LEARNING_EPOCHS
    losses = [row["train_loss"] for row in history]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses

    report = tmp_path / "report.json"
    capsys.readouterr()
    status = main([
        "eval", "--weights", str(run / "best.pt"), "--data", str(val_json), "--images", str(tmp_path / "images"),
        "--json", str(report), "--plot", str(tmp_path / "reliability.png"),
    ])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "triangle" in printed and "kite" in printed
    result = json.loads(report.read_text())
    ap = result["overall"]["AP"]
    coverage = result["calibration"]["visible"]["2_sigma"]
    print(f"synthetic learning test: OKS AP {ap:.3f}, 2-sigma coverage {coverage:.3f}")
    assert ap >= 0.15, result["overall"]
    assert 0.70 <= coverage <= 0.995, result["calibration"]
    assert (tmp_path / "reliability.png").stat().st_size > 0
