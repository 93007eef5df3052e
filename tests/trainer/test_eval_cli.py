"""``rfkp eval``: from a results file (pycocotools' numbers) and from a checkpoint."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rfkp.api import RFDETRKeypoint
from rfkp.cli.main import main as rfkp_main
from rfkp.variants import tiny
from trainer.evaluation.coco_eval import STAT_NAMES

SAMPLE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco-sample"


def _sample() -> dict:
    if not SAMPLE.is_dir():
        pytest.skip(f"shared test data not found at {SAMPLE}")
    return json.loads((SAMPLE / "person_keypoints.json").read_text())


def _run(argv: list[str]) -> int:
    """The ``rfkp`` command line itself (``rfkp.cli.main`` registers ``trainer.cli``)."""
    return rfkp_main(argv)


def _detections(coco: dict) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for ann in coco["annotations"]:
        kps = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kps[:, :2] += rng.normal(0, 3.0, (17, 2))
        kps[:, 2] = 1
        cov = np.tile(np.diag([9.0, 9.0]), (17, 1, 1))
        rows.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kps.reshape(-1).tolist(),
                     "score": float(rng.uniform(0.1, 1)), "keypoint_covariance": cov.tolist()})  # fmt: skip
    return rows


def test_eval_of_a_results_file_reproduces_pycocotools(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = _sample()
    rows = _detections(coco)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(rows))
    out_json, plot = tmp_path / "report.json", tmp_path / "reliability.png"
    argv = ["eval", "--data", str(SAMPLE / "person_keypoints.json"), "--detections", str(results)]
    assert _run([*argv, "--json", str(out_json), "--plot", str(plot)]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(SAMPLE / "person_keypoints.json"))
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(rows)), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    report = json.loads(out_json.read_text())
    assert [report["overall"][s] for s in STAT_NAMES] == [float(s) for s in evaluator.stats]
    assert [report["per_category"][0][s] for s in STAT_NAMES] == [float(s) for s in evaluator.stats]
    text = capsys.readouterr().out
    assert "person" in text and f"{evaluator.stats[0]:.4f}" in text and "COCO person" in text
    assert "1-sigma" in text and "visible" in text and "occluded" in text
    assert report["calibration"]["visible"]["count"] > 0 and plot.is_file()


def test_eval_errors_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _sample()
    data = str(SAMPLE / "person_keypoints.json")
    assert _run(["eval", "--data", data, "--detections", str(tmp_path / "none.json")]) == 1
    assert "detections file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 785,')
    assert _run(["eval", "--data", data, "--detections", str(bad)]) == 1
    assert "bad.json: malformed JSON at line 1" in capsys.readouterr().err
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [], "score": 1}]))
    assert _run(["eval", "--data", data, "--detections", str(bad)]) == 1
    assert "error: bad.json: result row 0 (image id 1): image id not in the ground truth" in capsys.readouterr().err
    nested = _detections(_sample())[:1]
    nested[0]["keypoints"] = np.reshape(nested[0]["keypoints"], (17, 3)).tolist()
    bad.write_text(json.dumps(nested))
    assert _run(["eval", "--data", data, "--detections", str(bad)]) == 1
    assert ("bad.json: result row 0 (image id 785): 'keypoints' must be a flat list of 51 numbers (x, y, v for "
            "each of 17 keypoints), got nested lists") in capsys.readouterr().err
    assert _run(["eval", "--data", data, "--weights", str(tmp_path / "w.pth")]) == 1
    assert "--images is required with --weights" in capsys.readouterr().err
    bad.write_text(json.dumps({"images/a.jpg": {"xyxy": [], "score": []}}))  # rfkp predict's detections.json
    assert _run(["eval", "--data", data, "--detections", str(bad)]) == 1
    assert "looks like rfkp predict's detections.json" in capsys.readouterr().err


def test_eval_runs_a_checkpoint_through_predict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = _sample()
    weights = tmp_path / "tiny.pth"
    RFDETRKeypoint.from_config(tiny(resolution=128), device="cpu").save_checkpoint(weights)
    saved, out_json = tmp_path / "dets.json", tmp_path / "report.json"
    argv = ["eval", "--data", str(SAMPLE / "person_keypoints.json"), "--images", str(SAMPLE / "images")]
    argv += ["--weights", str(weights), "--device", "cpu"]
    argv += ["--save-detections", str(saved), "--json", str(out_json)]
    assert _run(argv) == 0
    rows = json.loads(saved.read_text())
    assert rows and {r["image_id"] for r in rows} <= {im["id"] for im in coco["images"]}
    assert all(len(r["keypoints"]) == 51 and np.shape(r["keypoint_covariance"]) == (17, 2, 2) for r in rows)
    report = json.loads(out_json.read_text())
    # the same rows through the results-file path give the same report
    capsys.readouterr()
    again = tmp_path / "again.json"
    assert _run(["eval", "--data", str(SAMPLE / "person_keypoints.json"), "--detections", str(saved),
                 "--json", str(again)]) == 0  # fmt: skip
    assert json.loads(again.read_text()) == report


def test_eval_outputs_never_overwrite_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = _sample()
    data = tmp_path / "gt.json"
    data.write_text(json.dumps(coco))
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_detections(coco)))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    sigmas = tmp_path / "sigmas.json"
    sigmas.write_text('{"person": 0.1}')
    detections = ["--detections", str(results)]
    model = ["--weights", str(weights), "--images", str(SAMPLE / "images")]
    for source, extra, message in [
        (model, ["--save-detections", str(data)], f"--save-detections {data} is also --data: it would be overwritten"),
        (detections, ["--json", str(data)], f"--json {data} is also --data"),
        (detections, ["--json", str(results)], f"--json {results} is also --detections"),
        (model, ["--json", str(weights)], f"--json {weights} is also --weights"),
        (detections, ["--plot", str(sigmas), "--sigmas", str(sigmas)], f"--plot {sigmas} is also --sigmas"),
        (detections, ["--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.json")],
         f"--plot {tmp_path / 'r.json'} is also --json"),
    ]:
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        assert _run(["eval", "--data", str(data), *source, *extra]) == 1, extra
        assert message in capsys.readouterr().err, extra
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_eval_output_paths_are_checked_before_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = _sample()
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_detections(coco)))
    argv = ["eval", "--data", str(SAMPLE / "person_keypoints.json"), "--detections", str(results)]
    (tmp_path / "folder").mkdir()
    for extra, message in [
        (["--json", str(tmp_path / "folder")], f"--json {tmp_path / 'folder'} is a folder; give a file name"),
        (["--json", str(results / "r.json")], f"--json {results / 'r.json'}: {results} is a file, not a folder"),
        (["--plot", str(tmp_path / "p.txt")], f"--plot {tmp_path / 'p.txt'}: '.txt' is not an image format"),
        (["--plot", str(tmp_path / "p.pgf")], "'.pgf' is not an image format"),  # needs LaTeX: fails late
    ]:
        assert _run([*argv, *extra]) == 1, extra
        out, err = capsys.readouterr()
        assert message in err and "person" not in out, extra  # no report printed first
    with pytest.raises(IsADirectoryError):  # -v: the error comes with its traceback
        _run(["-v", *argv, "--json", str(tmp_path / "folder")])
    report = tmp_path / "new" / "folder" / "report.json"  # parent folders are made, as for --plot
    assert _run([*argv, "--json", str(report)]) == 0
    assert json.loads(report.read_text())["overall"]


def test_eval_input_and_option_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    coco = _sample()
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_detections(coco)))
    data = str(SAMPLE / "person_keypoints.json")
    assert _run(["eval", "--data", str(SAMPLE), "--detections", str(results)]) == 1
    assert f"COCO annotation file {SAMPLE} is a folder; give the JSON file" in capsys.readouterr().err
    given = ["--threshold", "0.3", "--batch-size", "2", "--images", str(SAMPLE / "images")]
    assert _run(["eval", "--data", data, "--detections", str(results), *given]) == 1
    assert ("--images, --threshold, --batch-size only apply with --weights (running a model); --detections are "
            "evaluated as they are") in capsys.readouterr().err
    for option, value, message in [("--batch-size", "0", "expected an integer >= 1, got 0"),
                                   ("--batch-size", "-1", "expected an integer >= 1, got -1"),
                                   ("--threshold", "nan", "expected a finite number, got 'nan'"),
                                   ("--threshold", "2", "expected a number in [0, 1], got 2")]:  # fmt: skip
        with pytest.raises(SystemExit):
            _run(["eval", "--data", data, "--weights", str(tmp_path / "w.pt"), option, value])
        assert f"argument {option}: {message}" in capsys.readouterr().err
    sigmas = tmp_path / "sigmas.json"
    for content, message in [({"person": "x"}, "sigmas.json: entry 'person': expected a sigma"),
                             ({"person": [0.1, "x"]}, "sigmas.json: entry 'person': expected a sigma"),
                             ({"cat": 0.1}, "sigmas.json: sigma overrides for unknown categories ['cat']")]:  # fmt: skip
        sigmas.write_text(json.dumps(content))
        assert _run(["eval", "--data", data, "--detections", str(results), "--sigmas", str(sigmas)]) == 1
        assert message in capsys.readouterr().err


def test_an_unreadable_image_is_named_by_its_dataset_id(tmp_path: Path) -> None:
    from trainer.data.schema import infer_schema
    from trainer.evaluation.predict import predict_rows

    coco = _sample()
    images = sorted(coco["images"], key=lambda im: im["id"])[:3]
    coco["images"] = images
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images:
        (folder / image["file_name"]).write_bytes((SAMPLE / "images" / image["file_name"]).read_bytes())
    broken = images[1]
    (folder / broken["file_name"]).write_bytes(b"\xff\xd8 not a jpeg")
    model = RFDETRKeypoint.from_config(tiny(resolution=64), device="cpu")
    with pytest.raises(ValueError, match=rf"^image id {broken['id']} \('{broken['file_name']}'\): ") as exc:
        predict_rows(model, coco, folder, infer_schema(coco), batch_size=3)
    assert "of 3" not in str(exc.value)  # not the position in the batch


def test_an_image_of_another_size_than_its_annotation_is_refused_before_the_model_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    coco = _sample()
    image = coco["images"][0]
    image["width"] += 1  # predictions would be scored in another pixel frame than the ground truth
    data = tmp_path / "gt.json"
    data.write_text(json.dumps(coco))
    weights = tmp_path / "tiny.pth"
    RFDETRKeypoint.from_config(tiny(resolution=64), device="cpu").save_checkpoint(weights)
    argv = ["eval", "--data", str(data), "--images", str(SAMPLE / "images"), "--weights", str(weights)]
    assert _run(argv) == 1
    err = capsys.readouterr().err
    assert f"image id {image['id']}" in err and f"but the annotation says {image['width']}x" in err


def test_a_plot_of_no_detections_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _sample()
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    plot = tmp_path / "reliability.png"
    argv = ["eval", "--data", str(SAMPLE / "person_keypoints.json"), "--detections", str(empty), "--plot", str(plot)]
    assert _run(argv) == 0
    assert "rfkp eval: no plot: there are no detections" in capsys.readouterr().err
    assert not plot.exists()
