"""``rfkp calibrate`` end to end: ground truth drawn from the model's own Gaussians times a known factor; the
command must find that factor, write it into a new checkpoint that predicts covariances scaled by it, and
report the coverage before, after and cross-validated."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rfkp import RFDETRKeypoint
from rfkp.checkpoint import read_checkpoint
from rfkp.cli.main import main as rfkp_main
from rfkp.variants import tiny

CLASSES = ["side", "bottom"]
K = [5, 3]
TRUE_FACTOR = {"side": 0.3, "bottom": 2.5}
NUM_IMAGES = 14


def _model() -> RFDETRKeypoint:
    model = RFDETRKeypoint.from_config(
        tiny(num_classes=2, num_keypoints_per_class=K, class_names=CLASSES), device="cpu", seed=11
    )
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # random heads: every keypoint gets its own Gaussian
        for p in model.network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calibrate")
    model = _model()
    weights = root / "model.pt"
    model.save_checkpoint(weights, dtype=torch.float16)
    model = RFDETRKeypoint.from_checkpoint(weights, device="cpu")  # the weights rfkp calibrate will see
    images_dir = root / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    coco: dict = {
        "images": [], "annotations": [],
        "categories": [{"id": 10 + c, "name": name, "keypoints": [f"k{j}" for j in range(K[c])], "skeleton": []}
                       for c, name in enumerate(CLASSES)],
    }  # fmt: skip
    for i in range(NUM_IMAGES):
        pixels = (rng.random((180, 240, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images_dir / f"{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 240, "height": 180})
        dets = model.predict(images_dir / f"{i}.png", threshold=0.0)
        for c, name in enumerate(CLASSES):
            best = int(np.flatnonzero(dets.class_id == c)[0])  # rows are sorted by score
            kps, cov = dets.keypoints[best, : K[c]], dets.covariance[best, : K[c]].astype(np.float64)
            noise = np.einsum("kij,kj->ki", np.linalg.cholesky(TRUE_FACTOR[name] * cov), rng.standard_normal((K[c], 2)))
            x0, y0, x1, y1 = (float(v) for v in dets.xyxy[best])
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": 10 + c,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "keypoints": np.concatenate([kps + noise, np.full((K[c], 1), 2.0)], 1).ravel().tolist(),
            })  # fmt: skip
    data = root / "val.json"
    data.write_text(json.dumps(coco))
    sigmas = root / "sigmas.json"
    sigmas.write_text(json.dumps({"side": 2.0, "bottom": 2.0}))  # wide OKS: every ground truth is matched
    return {"root": root, "weights": weights, "data": data, "images": images_dir, "sigmas": sigmas}


def _run(dataset: dict[str, Path], out: Path, *extra: str, weights: Path | None = None) -> int:
    argv = ["calibrate", "--weights", str(weights or dataset["weights"]), "--data", str(dataset["data"]), "--images",
            str(dataset["images"]), "--sigmas", str(dataset["sigmas"]), "--out", str(out), "--min-count", "10",
            "--device", "cpu", *extra]  # fmt: skip
    return rfkp_main(argv)


def test_calibrate_finds_the_factor_and_writes_a_checkpoint_that_applies_it(
    dataset: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    out, report_path, plot = dataset["root"] / "calibrated.pt", dataset["root"] / "report.json", dataset["root"] / "rel.png"
    assert _run(dataset, out, "--json", str(report_path), "--plot", str(plot)) == 0
    text = capsys.readouterr().out
    assert "covariance factors" in text and "cross-validated" in text and "calibrated checkpoint" in text
    report = json.loads(report_path.read_text())
    by_name = {c["name"]: c for c in report["classes"]}
    for name, factor in TRUE_FACTOR.items():
        fitted = by_name[name]["fitted_factor"]
        assert len(set(fitted)) == 1 and by_name[name]["source"][0] == "class"
        assert 0.6 * factor < fitted[0] < 1.6 * factor, (name, fitted, factor)  # 70 and 42 keypoints
    coverage = report["coverage"]
    n = NUM_IMAGES * sum(K)
    assert coverage["before"]["visible"]["count"] == n and coverage["cross-validated"]["visible"]["count"] == n
    assert abs(coverage["after (fitted images)"]["visible"]["2_sigma"] - 0.865) < 0.03
    assert abs(coverage["cross-validated"]["visible"]["2_sigma"] - 0.865) < 0.1
    assert plot.stat().st_size > 10_000

    before = RFDETRKeypoint.from_checkpoint(dataset["weights"], device="cpu")
    after = RFDETRKeypoint.from_checkpoint(out, device="cpu")
    assert after.config.covariance_scale == [by_name[name]["fitted_factor"] for name in CLASSES]
    assert read_checkpoint(out)["model"]["class_embed.weight"].dtype == torch.float16  # size kept
    image = dataset["images"] / "0.png"
    a, b = before.predict(image, threshold=0.0), after.predict(image, threshold=0.0)
    np.testing.assert_array_equal(a.score, b.score)
    factor = np.array([by_name[CLASSES[c]]["fitted_factor"][0] for c in a.class_id])[:, None, None, None]
    np.testing.assert_allclose(b.covariance[:, :3], a.covariance[:, :3] * factor, rtol=1e-6)

    # calibrating the calibrated model again finds factors near 1 and multiplies them in
    again = dataset["root"] / "again.pt"
    assert _run(dataset, again, "--json", str(report_path), weights=out) == 0
    second = json.loads(report_path.read_text())
    for cls in second["classes"]:
        assert cls["fitted_factor"][0] == pytest.approx(1.0, rel=0.05)
        assert cls["covariance_scale"][0] == pytest.approx(cls["fitted_factor"][0] * by_name[cls["name"]]["fitted_factor"][0])


def test_calibrate_per_keypoint_and_bad_input(dataset: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    report_path = dataset["root"] / "kp.json"
    assert _run(dataset, dataset["root"] / "kp.pt", "--by", "keypoint", "--json", str(report_path)) == 0
    report = json.loads(report_path.read_text())
    assert all(src == "keypoint" for c in report["classes"] for src in c["source"])  # 14 per keypoint >= 10
    capsys.readouterr()

    assert _run(dataset, dataset["weights"]) == 1
    assert f"--out {dataset['weights']} is also --weights: it would be overwritten" in capsys.readouterr().err
    for extra, message in [
        (["--fit-on", "occluded"], "val.json labels no occluded keypoints to fit on (--fit-on)"),
        (["--threshold", "1.0"], "the model detected nothing on val.json above --threshold 1: nothing to fit on"),
    ]:
        assert _run(dataset, dataset["root"] / "bad.pt", *extra) == 1, extra
        assert message in capsys.readouterr().err, extra
    assert not (dataset["root"] / "bad.pt").exists()
    assert _run(dataset, dataset["images"]) == 1
    assert "is a folder; name the checkpoint file to write" in capsys.readouterr().err
    broken = copy.deepcopy(json.loads(dataset["data"].read_text()))
    broken["categories"][0]["name"] = "top"
    bad = dataset["root"] / "renamed.json"
    bad.write_text(json.dumps(broken))
    argv = ["calibrate", "--weights", str(dataset["weights"]), "--data", str(bad), "--images", str(dataset["images"]),
            "--out", str(dataset["root"] / "x.pt"), "--device", "cpu"]  # fmt: skip
    assert rfkp_main(argv) == 1
    assert "no category for the keypointed classes ['side']" in capsys.readouterr().err
    assert not (dataset["root"] / "x.pt").exists()


def test_one_image_fits_but_skips_cross_validation(dataset: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    coco = json.loads(dataset["data"].read_text())
    coco["images"] = coco["images"][:1]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    one = dataset["root"] / "one.json"
    one.write_text(json.dumps(coco))
    report_path = dataset["root"] / "one_report.json"
    argv = ["calibrate", "--weights", str(dataset["weights"]), "--data", str(one), "--images", str(dataset["images"]),
            "--sigmas", str(dataset["sigmas"]), "--out", str(dataset["root"] / "one.pt"), "--min-count", "1",
            "--device", "cpu", "--json", str(report_path)]  # fmt: skip
    assert rfkp_main(argv) == 0
    assert "no cross-validation: cross-validation needs keypoints on at least two images" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert "cross-validated" not in report["coverage"] and report["images"] == 1
    assert (dataset["root"] / "one.pt").is_file()


def test_calibrate_outputs_are_checked_before_the_model_runs(dataset: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root = dataset["root"]
    out = root / "checked.pt"
    inputs = {name: dataset[name].read_bytes() for name in ("weights", "data", "sigmas")}
    for extra, message in [
        (["--json", str(dataset["weights"])], f"--json {dataset['weights']} is also --weights: it would be overwritten"),
        (["--json", str(dataset["data"])], f"--json {dataset['data']} is also --data"),
        (["--plot", str(dataset["sigmas"])], f"--plot {dataset['sigmas']} is also --sigmas"),
        (["--json", str(out)], f"--json {out} is also --out"),
        (["--plot", str(root / "p.txt")], f"--plot {root / 'p.txt'}: '.txt' is not an image format matplotlib writes"),
        (["--json", str(dataset["images"])], f"--json {dataset['images']} is a folder; give a file name"),
    ]:
        assert _run(dataset, out, *extra) == 1, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists(), extra  # refused before the checkpoint was written
    assert {name: dataset[name].read_bytes() for name in inputs} == inputs


@pytest.mark.parametrize(
    ("level", "message"),
    [("100", "got 100"), ("1e-9", "got 1e-9"), ("0.4", "got 0.4"), ("inf", "expected a finite number, got 'inf'"),
     ("-1", "got -1")],
)
def test_calibrate_level_is_a_sigma_level_in_a_useful_range(dataset: dict[str, Path], capsys: pytest.CaptureFixture,
                                                            level: str, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(dataset, dataset["root"] / "level.pt", "--level", level)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --level:" in err and message in err
    if "finite" not in message:
        assert "expected a number in [0.5, 3] sigmas (the ellipse holding 12 % to 99 % of a Gaussian)" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--folds", "1", "expected 0 (one fold per image) or an integer >= 2, got 1"),
     ("--folds", "-2", "expected an integer >= 0, got -2"),
     ("--min-count", "0", "expected an integer >= 1, got 0")],
)
def test_calibrate_counts_are_checked_while_parsing(dataset: dict[str, Path], capsys: pytest.CaptureFixture,
                                                    option: str, value: str, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(dataset, dataset["root"] / "counts.pt", option, value)
    assert exit_info.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not (dataset["root"] / "counts.pt").exists()


def test_factors_fitted_at_another_resolution_make_the_checkpoint_run_there(
    dataset: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    """Covariance factors hold at the resolution they were fitted at: with --resolution the calibrated
    checkpoint runs there (it kept the model's own resolution, where the factors do not hold)."""
    out, report_path = dataset["root"] / "r192.pt", dataset["root"] / "r192.json"
    assert _run(dataset, out, "--resolution", "192", "--json", str(report_path)) == 0
    assert "the calibrated checkpoint runs at 192 px (was 256)" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["resolution"] == 192 and report["resolution_changed_from"] == 256
    calibrated = RFDETRKeypoint.from_checkpoint(out, device="cpu")
    assert calibrated.config.resolution == 192
    assert RFDETRKeypoint.from_checkpoint(dataset["weights"], device="cpu").config.resolution == 256
