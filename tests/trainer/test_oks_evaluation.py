"""COCO OKS evaluation: pycocotools' own numbers, all images, per-category sigmas, result validation."""

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

from trainer.data.schema import infer_schema
from trainer.evaluation.coco_eval import STAT_NAMES, evaluate_keypoints
from trainer.evaluation.sigmas import COCO_PERSON_SIGMAS, DEFAULT_SIGMA, category_sigmas

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _load(relative: str) -> dict:
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"shared test data not found at {path}")
    return json.loads(path.read_text())


def perturbed_detections(coco: dict, seed: int, noise: float = 4.0) -> list[dict]:
    """Ground truth as detections: seeded pixel noise, random scores, every 5th one dropped, one false positive
    per image (a shifted copy)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, ann in enumerate(sorted(coco["annotations"], key=lambda a: a["id"])):
        kps = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        kps[:, :2] += rng.normal(0.0, noise, (len(kps), 2))
        kps[:, 2] = 1
        if i % 5 != 4:
            rows.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                         "keypoints": kps.reshape(-1).tolist(), "score": float(rng.uniform(0.2, 1.0))})  # fmt: skip
        if i % 3 == 0:
            kps[:, 0] += 25.0
            rows.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                         "keypoints": kps.reshape(-1).tolist(), "score": float(rng.uniform(0.0, 0.5))})  # fmt: skip
    return rows


def pycocotools_stats(
    coco: dict, rows: list[dict], sigmas: np.ndarray | None = None, cat_ids=None
) -> list[float]:
    """pycocotools called directly, the reference."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(coco)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(rows))
        evaluator = COCOeval(gt, dt, "keypoints")
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = sigmas
        if cat_ids is not None:
            evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats]


def test_reproduces_pycocotools_on_coco_sample() -> None:
    coco = _load("coco-sample/person_keypoints.json")
    for seed in (0, 1, 2):
        rows = perturbed_detections(coco, seed)
        report = evaluate_keypoints(coco, rows)
        expected = pycocotools_stats(coco, rows)
        assert [report.overall[s] for s in STAT_NAMES] == expected
        assert [report.per_category[0].stats[s] for s in STAT_NAMES] == expected
        assert 0.0 < report.overall["AP"] < 1.0
    np.testing.assert_array_equal(report.per_category[0].sigmas, COCO_PERSON_SIGMAS)
    assert report.num_images == 4 and report.calibration is None


def test_images_without_objects_are_evaluated() -> None:
    coco = _load("coco-sample/person_keypoints.json")
    rows = perturbed_detections(coco, seed=0)
    base = evaluate_keypoints(coco, rows).overall["AP"]
    with_empty = copy.deepcopy(coco)
    with_empty["images"].append({"id": 999, "file_name": "empty.jpg", "width": 640, "height": 480})
    false_positive = dict(rows[0], image_id=999, score=0.99)
    report = evaluate_keypoints(with_empty, [*rows, false_positive])
    assert report.num_images == 5
    assert [report.overall[s] for s in STAT_NAMES] == pycocotools_stats(with_empty, [*rows, false_positive])
    assert report.overall["AP"] < base


def test_two_categories_get_their_own_default_sigmas() -> None:
    coco = _load("mirror-mouse/val.json")
    rows = perturbed_detections(coco, seed=3, noise=3.0)
    report = evaluate_keypoints(coco, rows)
    default = np.full(7, DEFAULT_SIGMA)
    for scores in report.per_category:
        np.testing.assert_array_equal(scores.sigmas, default)
        expected = pycocotools_stats(coco, rows, sigmas=default, cat_ids=[scores.category_id])
        assert [scores.stats[s] for s in STAT_NAMES] == expected
    # both categories share the default sigmas, so one plain two-category COCOeval run gives the overall numbers
    assert [report.overall[s] for s in STAT_NAMES] == pycocotools_stats(coco, rows, sigmas=default)


def test_sigma_overrides_apply_per_category() -> None:
    coco = _load("mirror-mouse/val.json")
    rows = perturbed_detections(coco, seed=4, noise=6.0)
    plain = evaluate_keypoints(coco, rows)
    looser = evaluate_keypoints(coco, rows, sigmas={"mirror_mouse_side": 0.1})
    assert looser.per_category[0].stats["AP"] > plain.per_category[0].stats["AP"]
    assert looser.per_category[1].stats == plain.per_category[1].stats
    schema = infer_schema(coco)
    per_keypoint = category_sigmas(schema, {2: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07]})
    np.testing.assert_array_equal(per_keypoint[2], [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07])
    with pytest.raises(ValueError, match="unknown categories \\['cat'\\]"):
        category_sigmas(schema, {"cat": 0.1})
    with pytest.raises(
        ValueError, match=r"category 1 \('mirror_mouse_side'\): 2 sigmas given for 7 keypoints"
    ):
        category_sigmas(schema, {1: [0.1, 0.2]})
    with pytest.raises(ValueError, match="must be finite and > 0"):
        category_sigmas(schema, {1: -0.1})
    with pytest.raises(ValueError, match=r"category 1 \('mirror_mouse_side'\) has several sigma entries"):
        category_sigmas(schema, {"1": 0.1, "mirror_mouse_side": 0.2})
    digits = infer_schema({"categories": [{"id": 0, "name": "1", "keypoints": ["a"]},
                                          {"id": 1, "name": "2", "keypoints": ["b"]}]})  # fmt: skip
    with pytest.raises(ValueError, match="sigma key '1' is category 0's name and category 1's id"):
        category_sigmas(digits, {"0": 0.03, "1": 0.04})  # "1" could mean either category
    assert category_sigmas(digits, {"2": 0.05})[1].tolist() == [0.05]  # "2" is only a name
    with pytest.raises(ValueError, match="sigmas must be finite and > 0"):
        category_sigmas(digits, {0: 10**400})


def test_no_detections_score_zero() -> None:
    coco = _load("coco-sample/person_keypoints.json")
    report = evaluate_keypoints(coco, [])
    assert report.overall["AP"] == 0.0 and report.overall["AR"] == 0.0 and report.num_detections == 0
    from trainer.evaluation.report import format_report

    assert "calibration: n/a (there are no detections)" in format_report(report)


def test_bad_result_rows_are_named() -> None:
    coco = _load("coco-sample/person_keypoints.json")
    good = perturbed_detections(coco, seed=0)[:2]
    cases = [
        ([{k: v for k, v in good[0].items() if k != "score"}], "result row 0: missing key 'score'"),
        (
            [good[0], dict(good[1], image_id=5)],
            r"result row 1 \(image id 5\): image id not in the ground truth",
        ),
        ([dict(good[0], category_id=3)], "unknown category id 3"),
        ([dict(good[0], keypoints=good[0]["keypoints"][:-3])], "'keypoints' has 48 values, expected 51"),
        ([dict(good[0], keypoints=np.reshape(good[0]["keypoints"], (17, 3)).tolist())],
         r"'keypoints' must be a flat list of 51 numbers \(x, y, v for each of 17 keypoints\), got nested lists"),
        ([dict(good[0], keypoints="1 2 2")], "'keypoints' must be a flat list of 51 numbers .*, got a str$"),
        ([dict(good[0], score=float("nan"))], "'score' must be a finite number"),
        (
            [dict(good[0], keypoint_covariance=[[[1, 0], [0, 1]]] * 16)],
            r"shape \(16, 2, 2\), expected \(17, 2, 2\)",
        ),
        (
            [dict(good[0], keypoint_covariance=[[[1, 2], [2, 1]]] * 17)],
            "keypoint 0 is not symmetric positive",
        ),
        ([dict(good[0], keypoint_covariance=[[[1, 0], [0, 1]]] * 17), good[1]], "1 of 2 result rows carry"),
        # numpy would convert these strings, pycocotools would then fail with a traceback
        ([dict(good[0], score="0.5")], "'score' must be a finite number, got '0.5'"),
        ([dict(good[0], keypoints=[str(v) for v in good[0]["keypoints"]])], "'keypoints' must be a flat list"),
        ([dict(good[0], image_id=[good[0]["image_id"]])], r"result row 0: 'image_id' must be an integer in the int64 range, got \["),
        ([dict(good[0], category_id=True)], "'category_id' must be an integer in the int64 range, got True"),
        ([dict(good[0], image_id=2**64)], "'image_id' must be an integer in the int64 range"),
        ([dict(good[0], score=np.array([0.5, 0.6]))], "'score' must be a finite number"),
        ([dict(good[0], bbox=[0, 0, 5, 5]), good[1]], r"result row 1 .*'bbox' is given on some rows only"),
        ([dict(good[0], bbox=[0, 0, "5", 5])], "'bbox' must be \\[x, y, width, height\\]"),
        ([dict(good[0], bbox=[0, 0, 5])], "'bbox' must be \\[x, y, width, height\\]"),
        ([dict(good[0], keypoint_covariance=[[["1", 0], [0, 1]]] * 17)], "must hold finite numbers only"),
        # integers too large for a float (JSON has no limit) used to raise TypeError / OverflowError
        ([dict(good[0], keypoints=[10**400] + good[0]["keypoints"][1:])], "'keypoints' must be a flat list"),
        ([dict(good[0], score=10**400)], "'score' must be a finite number, got 1000"),
        ([dict(good[0], bbox=np.zeros(4))], "'bbox' must be \\[x, y, width, height\\]"),
        # pycocotools takes the area from the box: a negative one hid unmatched detections (AP too high)
        ([dict(good[0], bbox=[0, 0, 5, 5]), dict(good[1], bbox=[0, 0, -5, 5])],
         r"^result row 1 \(image id \d+\): 'bbox' \[0, 0, -5, 5\] has a negative width or height; both must be >= 0$"),
        ([dict(good[0], bbox=[0, 0, 5, -0.5])], "has a negative width or height"),
        ([dict(good[0], bbox=[1, 2, [3], 4])], "'bbox' must be \\[x, y, width, height\\] with 4 finite numbers"),
    ]
    for rows, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluate_keypoints(coco, rows)
    with pytest.raises(ValueError, match=r"^dets.json: result row 1 \(image id 5\): image id not in"):
        evaluate_keypoints(coco, [good[0], dict(good[1], image_id=5)], results_source="dets.json")
    with pytest.raises(ValueError, match="^dets.json: 1 of 2 result rows carry"):
        evaluate_keypoints(coco, [dict(good[0], keypoint_covariance=[[[1, 0], [0, 1]]] * 17), good[1]],
                           results_source="dets.json")  # fmt: skip
    evaluate_keypoints(coco, good)
    assert "id" not in good[0] and "area" not in good[0]  # the caller's rows are not written into
    # integral float ids (pandas) and pycocotools' empty box are what pycocotools itself takes
    floats = [dict(r, image_id=float(r["image_id"]), category_id=float(r["category_id"]), bbox=[]) for r in good]
    assert evaluate_keypoints(coco, floats).overall == evaluate_keypoints(coco, good).overall
    boxes = [dict(r, bbox=[-3.0, -2.0, 0.0, 40.0]) for r in good]  # negative x, y and a zero width are boxes
    assert evaluate_keypoints(coco, boxes).num_detections == 2


def test_annotation_ids_from_zero_or_negative_give_the_same_numbers() -> None:
    """pycocotools takes a matched ground-truth id of 0 for "no match" and only ids > 0 as taken; the evaluation
    gives it ids 1..N, so the file's own ids change nothing (AP, AR, calibration)."""
    coco = _load("mirror-mouse/val.json")
    rows = perturbed_detections(coco, seed=0, noise=3.0)
    for row in rows:
        row["keypoint_covariance"] = np.tile(np.diag([9.0, 9.0]), (7, 1, 1)).tolist()
    reference = evaluate_keypoints(coco, rows)
    assert len(reference.errors) > 0
    for first in (0, -5, -1000):
        renumbered = copy.deepcopy(coco)
        for i, ann in enumerate(renumbered["annotations"]):
            ann["id"] = first + i
        report = evaluate_keypoints(renumbered, rows)
        assert report.overall == reference.overall, first
        assert [c.stats for c in report.per_category] == [c.stats for c in reference.per_category], first
        np.testing.assert_array_equal(report.errors.distance, reference.errors.distance)
        np.testing.assert_array_equal(report.errors.image_id, reference.errors.image_id)
    from trainer.evaluation.coco_eval import SOURCE_ID_KEY, ground_truth_for_eval

    gt = ground_truth_for_eval(renumbered)  # the file's ids stay beside pycocotools' own
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    assert [a[SOURCE_ID_KEY] for a in gt["annotations"]] == [a["id"] for a in renumbered["annotations"]]


def test_a_segmentation_in_result_rows_is_ignored() -> None:
    """pycocotools' loadRes decodes a row's segmentation (keys of the first row for all): a polygon, garbage or a
    segmentation on the first row only used to raise inside pycocotools; keypoint evaluation does not use it."""
    coco = _load("coco-sample/person_keypoints.json")
    rows = perturbed_detections(coco, seed=0)
    expected = evaluate_keypoints(coco, rows).overall
    polygon = [[10.0, 10.0, 50.0, 10.0, 50.0, 60.0]]
    cases = {
        "polygon": [dict(r, segmentation=polygon) for r in rows],
        "garbage": [dict(r, segmentation=g) for r, g in zip(rows, ["x", None, 7, {"counts": 1}] * len(rows))],
        "first row only": [dict(rows[0], segmentation=polygon), *rows[1:]],
        "with pycocotools' empty box": [dict(r, segmentation="x", bbox=[]) for r in rows],
    }
    for name, with_segmentation in cases.items():
        assert evaluate_keypoints(coco, with_segmentation).overall == expected, name
    assert cases["polygon"][0]["segmentation"] == polygon  # the caller's rows keep it


def test_an_area_of_0_is_taken_as_missing_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """pycocotools divides by the ground truth's area: an area of 0 (exporters without segmentations) made every
    OKS 0. It gets the box area, as a missing area does, and one warning with the count."""
    from trainer.evaluation.coco_eval import _warn_once

    _warn_once.cache_clear()
    coco = _load("coco-sample/person_keypoints.json")
    rows = perturbed_detections(coco, seed=0)
    zero, missing = copy.deepcopy(coco), copy.deepcopy(coco)
    for zero_ann, missing_ann in list(zip(zero["annotations"], missing["annotations"]))[::2]:
        zero_ann["area"] = 0
        del missing_ann["area"]
    expected = evaluate_keypoints(missing, rows).overall
    assert expected != evaluate_keypoints(coco, rows).overall  # the box area is not the file's segment area
    with caplog.at_level("WARNING"):
        assert evaluate_keypoints(zero, rows, source="zero.json").overall == expected
        assert evaluate_keypoints(zero, rows, source="zero.json").overall == expected
    count = len(coco["annotations"][::2])
    message = (f"zero.json: {count} of {len(coco['annotations'])} annotations have area 0; their box area "
               "(width x height) is used for the OKS instead, as for a missing area")  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [message]  # once, not once per evaluation
