"""``KeypointDetections`` -> COCO keypoint result rows."""

from __future__ import annotations

import numpy as np
import pytest

from rfkp.detections import KeypointDetections
from trainer.data.schema import infer_schema
from trainer.evaluation.results import class_categories, detections_to_results

NAN = float("nan")
SCHEMA = infer_schema(
    {
        "categories": [
            {"id": 4, "name": "a", "keypoints": ["x", "y", "z"]},
            {"id": 9, "name": "b", "keypoints": ["p", "q"]},
        ]
    }
)


def _detections() -> KeypointDetections:
    cov = np.stack([np.diag([4.0, 1.0])] * 3)
    unused = np.full((2, 2), NAN)
    return KeypointDetections(
        xyxy=np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]]),
        class_id=np.array([2, 0, 1]),
        score=np.array([0.9, 0.4, 0.8]),
        keypoints=np.array(
            [[[1.5, 2.5], [3.5, 4.5], [5.0, 6.0]], [[7.5, 8.5], [9.5, 10.5], [NAN, NAN]], [[NAN] * 2] * 3]
        ),
        covariance=np.stack([cov, np.stack([cov[0], cov[1], unused]), np.full((3, 2, 2), NAN)]),
        findable=np.array([[0.9, 0.8, 0.7], [0.6, 0.5, NAN], [NAN] * 3]),
        visible=np.array([[0.4, 0.3, 0.2], [0.1, 0.2, NAN], [NAN] * 3]),
        class_names=["b", "background", "a"],
        keypoint_names=[["p", "q"], [], ["x", "y", "z"]],
        skeletons=[[], [], []],
        image_size=(30, 40),
    )


def test_rows_map_classes_to_categories_by_name_in_coco_pixel_coordinates() -> None:
    categories = class_categories(["b", "background", "a"], SCHEMA)
    assert [c.name if c else None for c in categories] == ["b", None, "a"]
    rows = detections_to_results(_detections(), image_id=7, categories=categories)
    assert len(rows) == 2  # the background class has no category
    first, second = rows
    assert (first["image_id"], first["category_id"], second["category_id"]) == (7, 4, 9)
    # pixel centres at +0.5 become COCO pixel indices
    assert first["keypoints"] == [1.0, 2.0, 1.0, 3.0, 4.0, 1.0, 4.5, 5.5, 1.0]  # fmt: skip
    assert second["keypoints"] == [7.0, 8.0, 1.0, 9.0, 10.0, 1.0]
    assert first["score"] == pytest.approx(0.9) and second["score"] == pytest.approx(0.4)
    assert np.shape(second["keypoint_covariance"]) == (2, 2, 2)
    assert second["keypoint_covariance"][0] == [[4, 0], [0, 1]]
    assert second["keypoint_findable"] == pytest.approx([0.6, 0.5])
    assert first["keypoint_visible"] == pytest.approx([0.4, 0.3, 0.2])


def test_mismatched_classes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"no model class \['cat'\] matches a dataset category \['a', 'b'\]"):
        class_categories(["cat"], SCHEMA)
    other = infer_schema({"categories": [{"id": 4, "name": "a", "keypoints": ["x", "y", "z", "w"]}]})
    with pytest.raises(
        ValueError, match=r"model class 2 \('a'\) has 3 keypoints but dataset category 4 \('a'\) has 4"
    ):
        detections_to_results(_detections(), 7, class_categories(["b", "background", "a"], other))
    with pytest.raises(  # with the model's K the mismatch is found before any image is run
        ValueError, match=r"model class 0 \('a'\) has 3 keypoints but dataset category 4 \('a'\) has 4"
    ):
        class_categories(["a"], other, [3])


def test_categories_no_class_matches_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert class_categories(["a"], SCHEMA, [3]) == [SCHEMA.categories[0]]
    assert "dataset categories ['b'] match no model class: their objects count as missed" in caplog.text
