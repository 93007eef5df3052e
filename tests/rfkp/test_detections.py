"""KeypointDetections: validation, indexing, serialisation, COCO rows and the supervision view."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rfkp.detections import KeypointDetections

NAN = float("nan")
CLASS_NAMES = ["person", "plate", "car"]
KEYPOINT_NAMES = [["nose", "left_eye", "right_eye"], ["tl", "br"], []]
SKELETONS = [[(0, 1), (0, 2)], [(0, 1)], []]


def _make(n_extra: int = 0) -> KeypointDetections:
    """Three detections (person, plate, car) plus ``n_extra`` persons; K = 3."""
    rng = np.random.default_rng(0)
    class_id = np.array([0, 1, 2] + [0] * n_extra, np.int64)
    n = len(class_id)
    counts = np.array([len(k) for k in KEYPOINT_NAMES])[class_id]
    active = np.arange(3)[None, :] < counts[:, None]
    keypoints = rng.uniform(0, 100, (n, 3, 2)).astype(np.float32)
    a = rng.uniform(1, 4, (n, 3))
    covariance = np.zeros((n, 3, 2, 2), np.float32)
    covariance[..., 0, 0], covariance[..., 1, 1], covariance[..., 0, 1] = a, a + 1, 0.5
    covariance[..., 1, 0] = 0.5
    findable = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    visible = (findable * rng.uniform(0, 1, (n, 3))).astype(np.float32)
    keypoints[~active] = NAN
    covariance[~active] = NAN
    findable[~active] = NAN
    visible[~active] = NAN
    xy = rng.uniform(0, 50, (n, 2))
    xyxy = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    return KeypointDetections(
        xyxy=xyxy,
        class_id=class_id,
        score=rng.uniform(0, 1, n).astype(np.float32),
        keypoints=keypoints,
        covariance=covariance,
        findable=findable,
        visible=visible,
        class_names=CLASS_NAMES,
        keypoint_names=KEYPOINT_NAMES,
        skeletons=SKELETONS,
        image_size=(120, 160),
    )


def _assert_same(a: KeypointDetections, b: KeypointDetections) -> None:
    for name in ("xyxy", "class_id", "score", "keypoints", "covariance", "findable", "visible"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)  # NaN == NaN here
    assert (a.class_names, a.keypoint_names, a.skeletons, a.image_size) == (
        b.class_names, b.keypoint_names, b.skeletons, b.image_size
    )


def test_construction_coerces_dtypes_and_masks() -> None:
    det = _make()
    assert len(det) == 3
    assert det.xyxy.dtype == np.float32 and det.class_id.dtype == np.int64
    assert [det.num_keypoints(c) for c in range(3)] == [3, 2, 0]
    assert det.active_mask().tolist() == [[True, True, True], [True, True, False], [False, False, False]]
    coerced = KeypointDetections(**{**_fields(det), "xyxy": det.xyxy.astype(np.float64), "class_id": [0, 1, 2]})
    assert coerced.xyxy.dtype == np.float32 and coerced.class_id.dtype == np.int64
    with pytest.raises(ValueError, match="out of range"):
        det.num_keypoints(3)


def _fields(det: KeypointDetections) -> dict[str, object]:
    return {name: getattr(det, name) for name in det.__dataclass_fields__}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"xyxy": np.zeros((3, 5))}, r"xyxy must have shape \(3, 4\)"),
        ({"score": np.zeros(2)}, r"score must have shape \(3,\)"),
        ({"keypoints": np.zeros((3, 4, 2))}, r"keypoints must have shape \(3, 3, 2\).*K=3"),
        ({"covariance": np.zeros((3, 3, 2))}, r"covariance must have shape \(3, 3, 2, 2\)"),
        ({"class_id": np.array([0, 1, 3])}, r"class_id values must lie in \[0, 3\)"),
        ({"class_id": np.array([0.0, 1.5, 2.0])}, "class_id must hold integers"),
        ({"score": np.array([0.5, 1.5, 0.2])}, r"score must lie in \[0, 1\]"),
        ({"image_size": (0, 10)}, "image_size"),
        ({"keypoint_names": KEYPOINT_NAMES[:2]}, "keypoint_names must have one entry per class"),
        ({"skeletons": [[(0, 3)], [], []]}, r"skeleton edge \(0, 3\) of class 0"),
        ({"skeletons": [[(1, 1)], [], []]}, "distinct"),
        ({"category_ids": [1, 1, 2]}, r"category_ids must be distinct, got \[1, 1, 2\]"),  # one COCO category twice
        ({"category_ids": "123"}, "category_ids must be a list of integers"),
        ({"category_ids": [1.9, True, 3]}, "category_ids must be a list of integers"),
    ],
)
def test_validation_errors(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KeypointDetections(**{**_fields(_make()), **change})


def test_inactive_slots_must_be_nan_and_active_not() -> None:
    fields = _fields(_make())
    keypoints = fields["keypoints"].copy()
    keypoints[1, 2] = (1.0, 2.0)  # plate has 2 keypoints: slot 2 is inactive
    with pytest.raises(ValueError, match="keypoints: inactive keypoint slots"):
        KeypointDetections(**{**fields, "keypoints": keypoints})
    findable = fields["findable"].copy()
    findable[0, 1] = NAN
    with pytest.raises(ValueError, match="findable: active keypoint slots must not be NaN"):
        KeypointDetections(**{**fields, "findable": findable})
    keypoints = fields["keypoints"].copy()
    keypoints[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="keypoints: active keypoint slots must be finite"):
        KeypointDetections(**{**fields, "keypoints": keypoints})
    covariance = fields["covariance"].copy()
    covariance[0, 0] = np.inf  # an infinitely uncertain keypoint is a valid answer
    assert np.isinf(KeypointDetections(**{**fields, "covariance": covariance}).covariance[0, 0]).all()
    visible = fields["visible"].copy()
    visible[0, 0] = 1.2
    with pytest.raises(ValueError, match=r"visible probabilities must lie in \[0, 1\]"):
        KeypointDetections(**{**fields, "visible": visible})


def test_indexing_int_slice_mask_and_array() -> None:
    det = _make(n_extra=2)
    for flag in (True, np.bool_(False)):
        with pytest.raises(IndexError, match="single bool"):
            det[flag]
    one = det[1]
    assert len(one) == 1 and one.class_id.tolist() == [1]
    _assert_same(det[-1], det[4:5])
    _assert_same(det[np.array([False, True, False, False, False])], one)
    picked = det[[4, 0]]
    assert picked.class_id.tolist() == [0, 0]
    np.testing.assert_array_equal(picked.keypoints, det.keypoints[[4, 0]])
    assert len(det[det.score > 2.0]) == 0
    assert len(det[2:2]) == 0 and det[2:2].keypoints.shape == (0, 3, 2)
    with pytest.raises(IndexError, match="out of range"):
        det[5]
    with pytest.raises(IndexError, match="bool mask"):
        det[np.array([True, False])]
    _assert_same(det[np.array(1)], one)  # 0-d arrays and tensors are their value
    _assert_same(det[torch.tensor(1)], one)
    _assert_same(det[torch.tensor([4, 0])], picked)
    with pytest.raises(IndexError, match=r"index arrays must be 1-D, got shape \(1, 2\)"):
        det[np.array([[0, 1]])]
    part = det[0:2]
    part.score[0] = 5.0  # the selection owns its arrays: the parent stays valid
    assert det.score[0] != 5.0


def test_boxes_must_be_ordered() -> None:
    fields = _fields(_make())
    boxes = fields["xyxy"].copy()
    boxes[0, [0, 2]] = boxes[0, [2, 0]] + [1.0, -1.0]
    with pytest.raises(ValueError, match="x2 >= x1 and y2 >= y1"):
        KeypointDetections(**{**fields, "xyxy": boxes})


def test_empty() -> None:
    det = KeypointDetections.empty(class_names=CLASS_NAMES, keypoint_names=KEYPOINT_NAMES, image_size=(10, 20))
    assert len(det) == 0 and det.keypoints.shape == (0, 3, 2) and det.covariance.shape == (0, 3, 2, 2)
    assert det.skeletons == [[], [], []]
    assert det.to_coco_results(image_id=1) == []
    _assert_same(KeypointDetections.from_dict(json.loads(json.dumps(det.to_dict()))), det)


def test_dict_roundtrip_through_strict_json() -> None:
    det = _make(n_extra=1)
    text = json.dumps(det.to_dict(), allow_nan=False)  # NaN must be written as null
    assert "null" in text
    back = KeypointDetections.from_dict(json.loads(text))
    _assert_same(back, det)
    assert back.to_dict() == det.to_dict()
    with pytest.raises(ValueError, match="lacks keys"):
        KeypointDetections.from_dict({"xyxy": []})
    det.covariance[0, 0] = [[np.inf, -np.inf], [-np.inf, np.inf]]  # overflowed: strict JSON has no Infinity
    back = KeypointDetections.from_dict(json.loads(json.dumps(det.to_dict(), allow_nan=False)))
    _assert_same(back, det)


def test_coco_results_rows() -> None:
    det = _make()
    det.visible[0] = [0.9, 0.2, 0.1]
    det.findable[0] = [0.95, 0.7, 0.3]
    rows = det.to_coco_results(image_id=7, category_ids={0: 1, 1: 5, 2: 3}, visible_threshold=0.5)
    assert [r["category_id"] for r in rows] == [1, 5, 3]
    person = rows[0]
    x1, y1, x2, y2 = det.xyxy[0].tolist()
    assert person["image_id"] == 7 and person["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert person["score"] == float(det.score[0])
    kp = (det.keypoints[0] - 0.5).tolist()  # pixel centres at +0.5 -> COCO pixel indices
    assert person["keypoints"] == [kp[0][0], kp[0][1], 2, kp[1][0], kp[1][1], 1, kp[2][0], kp[2][1], 0]
    assert len(rows[1]["keypoints"]) == 6  # the plate class has K = 2: padding is not exported
    assert "keypoints" not in rows[2]
    # the uncertainty rfkp eval --detections measures calibration from, for the class's keypoints only
    assert person["keypoint_covariance"] == det.covariance[0, :3].astype(np.float64).tolist()
    assert person["keypoint_findable"] == pytest.approx([0.95, 0.7, 0.3])
    assert np.asarray(rows[1]["keypoint_covariance"]).shape == (2, 2, 2) and "keypoint_visible" not in rows[2]
    plain = det.to_coco_results(image_id=7, uncertainty=False)[0]
    assert set(plain) == {"image_id", "category_id", "bbox", "score", "keypoints"}
    assert all(math.isfinite(v) for r in rows for v in r.get("keypoints", []))
    json.dumps(rows, allow_nan=False)
    assert [r["category_id"] for r in det.to_coco_results(image_id=7)] == [0, 1, 2]
    with pytest.raises(ValueError, match="no entry for class index 2"):
        det.to_coco_results(image_id=7, category_ids=[1, 2])
    rows = det.to_coco_results(image_id=np.int64(7), category_ids=np.array([1, 5, 3]))
    assert type(rows[0]["image_id"]) is int and type(rows[0]["category_id"]) is int
    json.dumps(rows)  # numpy ids would not serialise
    for image_id in ("7", None, 7.5, True):
        with pytest.raises(ValueError, match="image_id must be an integer"):
            det.to_coco_results(image_id=image_id)
    with pytest.raises(ValueError, match=r"category_ids\[0\] must be an integer, got 1.7"):
        det.to_coco_results(image_id=7, category_ids=[1.7, 5, 3])


def test_coco_results_use_the_models_category_ids() -> None:
    fields = _fields(_make())
    det = KeypointDetections(**{**fields, "category_ids": [4, 9, 2]})  # e.g. a model trained on such a COCO file
    assert [r["category_id"] for r in det.to_coco_results(image_id=1)] == [4, 9, 2]
    assert [r["category_id"] for r in det.to_coco_results(image_id=1, category_ids=[0, 1, 2])] == [0, 1, 2]
    assert det[1:].category_ids == [4, 9, 2]
    back = KeypointDetections.from_dict(json.loads(json.dumps(det.to_dict())))
    assert back.category_ids == [4, 9, 2]
    with pytest.raises(ValueError, match="category_ids must have one entry per class"):
        KeypointDetections(**{**fields, "category_ids": [1, 2]})


def test_coco_results_subtract_the_models_keypoint_offset() -> None:
    fields = _fields(_make())
    peer = KeypointDetections(**{**fields, "coco_keypoint_offset": 0.0})  # an rfdetr checkpoint's detections
    assert peer.to_coco_results(image_id=1)[0]["keypoints"][:2] == fields["keypoints"][0, 0].tolist()
    assert peer[:1].coco_keypoint_offset == 0.0
    back = KeypointDetections.from_dict(json.loads(json.dumps(peer.to_dict())))
    assert back.coco_keypoint_offset == 0.0
    old = {k: v for k, v in _make().to_dict().items() if k != "coco_keypoint_offset"}  # written before the field
    assert KeypointDetections.from_dict(old).coco_keypoint_offset == 0.5
    assert KeypointDetections.from_dict({**old, "coco_keypoint_offset": None}).coco_keypoint_offset == 0.5
    with pytest.raises(ValueError, match="coco_keypoint_offset must be a finite number"):
        KeypointDetections.from_dict({**old, "coco_keypoint_offset": "half"})
    for bad in (float("nan"), "0.5", True, None):
        with pytest.raises(ValueError, match="coco_keypoint_offset must be a finite number"):
            KeypointDetections(**{**fields, "coco_keypoint_offset": bad})


def test_to_supervision() -> None:
    sv = pytest.importorskip("supervision")
    det = _make()
    kp = det.to_supervision(visible_threshold=0.3)
    assert isinstance(kp, sv.KeyPoints) and len(kp) == 3
    active = det.active_mask()
    np.testing.assert_array_equal(kp.xy[active], det.keypoints[active])
    assert (kp.xy[~active] == 0).all() and (kp.keypoint_confidence[~active] == 0).all()
    np.testing.assert_array_equal(kp.visible, active & (np.nan_to_num(det.visible) >= 0.3))
    np.testing.assert_array_equal(kp.detection_confidence, det.score)
    assert kp.data["class_name"].tolist() == CLASS_NAMES
    assert kp.data["covariance"].shape == (3, 3, 2, 2)


def test_repr_is_one_short_line() -> None:
    det = _make(n_extra=2)
    text = repr(det)
    assert "\n" not in text and len(text) < 200 and text.startswith(f"KeypointDetections({len(det)} in ")
    assert repr(det[2:2]).startswith("KeypointDetections(0 in ")


def test_to_supervision_passes_these_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """What to_supervision hands supervision.KeyPoints, checked with a stand-in module (supervision is in no
    extra CI installs; test_to_supervision runs against the real package where it is installed)."""
    import sys
    import types

    captured: dict = {}
    stand_in = types.ModuleType("supervision")
    stand_in.KeyPoints = lambda **kwargs: captured.update(kwargs) or "keypoints"
    monkeypatch.setitem(sys.modules, "supervision", stand_in)
    det = _make()
    assert det.to_supervision(visible_threshold=0.3) == "keypoints"
    active = det.active_mask()
    np.testing.assert_array_equal(captured["xy"][active], det.keypoints[active].astype(np.float32))
    assert (captured["xy"][~active] == 0).all() and (captured["keypoint_confidence"][~active] == 0).all()
    np.testing.assert_array_equal(captured["visible"], active & (np.nan_to_num(det.visible) >= 0.3))
    np.testing.assert_array_equal(captured["detection_confidence"], det.score)
    assert captured["data"]["class_name"].tolist() == CLASS_NAMES
    assert captured["data"]["covariance"].shape == det.covariance.shape
    monkeypatch.setitem(sys.modules, "supervision", None)  # not installed
    with pytest.raises(ImportError, match="pip install supervision"):
        det.to_supervision()
