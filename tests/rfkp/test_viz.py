"""draw_detections: pixel-level checks on a blank canvas with hand-made detections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from rfkp.detections import KeypointDetections
from rfkp.viz import CLASS_COLOURS, draw_detections, ellipse_points

H, W = 200, 240
SIGMA_MAJOR, SIGMA_MINOR, ANGLE = 10.0, 4.0, math.radians(30.0)
CENTRES = [(60.5, 60.5), (160.5, 60.5), (100.5, 150.5)]  # visible, occluded, not findable


def _rotated_cov() -> np.ndarray:
    rot = np.array([[math.cos(ANGLE), -math.sin(ANGLE)], [math.sin(ANGLE), math.cos(ANGLE)]])
    return rot @ np.diag([SIGMA_MAJOR**2, SIGMA_MINOR**2]) @ rot.T


def _detections(class_id: int = 0, skeleton: list[tuple[int, int]] | None = None) -> KeypointDetections:
    cov = np.broadcast_to(_rotated_cov(), (1, 3, 2, 2))
    return KeypointDetections(
        xyxy=np.array([[20.0, 30.0, 220.0, 190.0]]),
        class_id=np.array([class_id]),
        score=np.array([0.75]),
        keypoints=np.array([CENTRES]),
        covariance=cov,
        findable=np.array([[0.9, 0.8, 0.1]]),
        visible=np.array([[0.9, 0.2, 0.05]]),
        class_names=["mouse", "plate"],
        keypoint_names=[["nose", "tail", "paw"], ["a", "b", "c"]],
        skeletons=[skeleton or [], []],
        image_size=(H, W),
    )


def _coloured(canvas: np.ndarray, x: float, y: float, colour: tuple[int, int, int], reach: int = 1) -> bool:
    col, row = int(math.floor(x)), int(math.floor(y))
    patch = canvas[max(row - reach, 0) : row + reach + 1, max(col - reach, 0) : col + reach + 1]
    return bool((patch == np.array(colour)).all(axis=-1).any())


def _draw(det: KeypointDetections, **kwargs: object) -> np.ndarray:
    blank = np.zeros((H, W, 3), np.uint8)
    out = draw_detections(blank, det, draw_boxes=False, draw_labels=False, line_width=2, **kwargs)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (W, H)
    assert not blank.any()  # the input is not drawn on
    return np.array(out)


def _outline_gaps(canvas: np.ndarray, centre: tuple[float, float], colour: tuple[int, int, int]) -> tuple[float, int]:
    """Along the expected 2-sigma outline: (fraction of points drawn, number of gaps of at least 1 px)."""
    points = ellipse_points(centre, 2 * SIGMA_MAJOR, 2 * SIGMA_MINOR, ANGLE, step=0.5)[:-1]
    drawn = np.array([_coloured(canvas, x, y, colour) for x, y in points])
    if drawn.all():
        return 1.0, 0
    rolled = np.roll(drawn, -int(np.argmax(drawn)))  # start on a drawn point so no gap wraps around
    runs = np.diff(np.concatenate([[0], (~rolled).astype(int), [0]]))
    lengths = np.flatnonzero(runs == -1) - np.flatnonzero(runs == 1)
    return float(drawn.mean()), int((lengths >= 2).sum())


def test_ellipse_outline_at_two_sigma_along_major_axis() -> None:
    colour = CLASS_COLOURS[0]
    canvas = _draw(_detections(), n_sigma=2.0)
    cx, cy = CENTRES[0]
    direction = np.array([math.cos(ANGLE), math.sin(ANGLE)])
    # March outwards along the major axis, past the dot: the last coloured pixel is the outline at 2 sigma.
    hits = [r for r in np.arange(5.0, 40.0, 0.25) if _coloured(canvas, *(np.array([cx, cy]) + r * direction), colour, 0)]
    assert abs(max(hits) - 2 * SIGMA_MAJOR) <= 1.5
    assert not _coloured(canvas, *(np.array([cx, cy]) + 12.0 * direction), colour, 0)  # inside stays empty
    normal = np.array([-math.sin(ANGLE), math.cos(ANGLE)])
    hits = [r for r in np.arange(4.0, 20.0, 0.25) if _coloured(canvas, *(np.array([cx, cy]) + r * normal), colour, 0)]
    assert abs(max(hits) - 2 * SIGMA_MINOR) <= 1.5
    wider = _draw(_detections(), n_sigma=3.0)
    assert _coloured(wider, *(np.array([cx, cy]) + 3 * SIGMA_MAJOR * direction), colour)
    assert not _coloured(canvas, *(np.array([cx, cy]) + 3 * SIGMA_MAJOR * direction), colour)


def test_solid_when_visible_dashed_when_occluded() -> None:
    colour = CLASS_COLOURS[0]
    canvas = _draw(_detections())
    assert _outline_gaps(canvas, CENTRES[0], colour) == (1.0, 0)
    fraction, gaps = _outline_gaps(canvas, CENTRES[1], colour)
    assert 0.5 <= fraction <= 0.95 and gaps >= 4
    # Visible dot is filled; the occluded one is a ring with an empty centre.
    assert _coloured(canvas, *CENTRES[0], colour, 0)
    assert not _coloured(canvas, *CENTRES[1], colour, 0)
    assert _coloured(canvas, *CENTRES[1], colour, 3)


def test_not_findable_draws_nothing() -> None:
    canvas = _draw(_detections(skeleton=[(0, 1), (0, 2)]))
    cx, cy = CENTRES[2]
    row, col = int(cy), int(cx)
    assert not canvas[row - 30 : row + 30, col - 30 : col + 30].any()
    # The edge between findable keypoints is drawn, the one to the not-findable keypoint is not.
    assert _coloured(canvas, (CENTRES[0][0] + CENTRES[1][0]) / 2, CENTRES[0][1], CLASS_COLOURS[0])
    mid = ((CENTRES[0][0] + cx) / 2, (CENTRES[0][1] + cy) / 2)
    assert not _coloured(canvas, *mid, CLASS_COLOURS[0], 2)


def test_thresholds_change_the_drawing() -> None:
    colour = CLASS_COLOURS[0]
    all_visible = _draw(_detections(), visible_threshold=0.1)
    assert _outline_gaps(all_visible, CENTRES[1], colour) == (1.0, 0)
    none_findable = _draw(_detections(), findable_threshold=0.95)
    assert not none_findable.any()


def test_boxes_labels_and_class_colours() -> None:
    det = _detections(class_id=1)
    out = np.array(draw_detections(np.zeros((H, W, 3), np.uint8), det, line_width=2))
    colour = CLASS_COLOURS[1]
    assert _coloured(out, 120.0, 30.5, colour, 0)  # top edge of the box
    assert not (out == np.array(CLASS_COLOURS[0])).all(-1).any()
    label_region = out[0:30, 20:120]  # the label sits above the box's top-left corner
    assert (label_region == np.array(colour)).all(-1).sum() > 100
    assert (label_region != np.array(colour)).any(-1).sum() - (label_region == 0).all(-1).sum() > 10  # text


def test_accepts_pil_and_rejects_size_mismatch() -> None:
    det = _detections()
    out = draw_detections(Image.new("L", (W, H), 40), det)
    assert out.size == (W, H)
    with pytest.raises(ValueError, match=r"image is 100x240 .* \(200, 240\)"):
        draw_detections(np.zeros((100, W, 3), np.uint8), det)


def test_accepts_the_tensors_predict_takes() -> None:
    det = _detections()
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    expected = np.array(draw_detections(image, det))
    chw = torch.from_numpy(image).permute(2, 0, 1)
    assert np.array_equal(np.array(draw_detections(chw.float() / 255.0, det)), expected)
    assert np.array_equal(np.array(draw_detections(chw, det)), expected)
    with pytest.raises(ValueError, match="4-D tensor"):
        draw_detections(chw[None].float(), det)


def test_empty_detections_return_a_copy() -> None:
    image = np.full((H, W, 3), 17, np.uint8)
    det = KeypointDetections.empty(class_names=["a"], keypoint_names=[["p"]], image_size=(H, W))
    assert np.array_equal(np.array(draw_detections(image, det)), image)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("line_width", 0, "line_width must be an int >= 1"),
        ("line_width", 2.5, "line_width must be an int >= 1"),
        ("point_radius", -1, "point_radius must be an int >= 0"),
        ("n_sigma", 0.0, "n_sigma must be a positive finite number"),
        ("n_sigma", float("inf"), "n_sigma must be a positive finite number"),
        ("n_sigma", float("nan"), "n_sigma must be a positive finite number"),
        ("findable_threshold", 1.5, r"findable_threshold must be a probability in \[0, 1\]"),
        ("visible_threshold", "0.5", r"visible_threshold must be a probability in \[0, 1\]"),
    ],
)
def test_drawing_options_are_checked(option: str, value: object, message: str) -> None:
    image = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(ValueError, match=message):
        draw_detections(image, _detections(), **{option: value})
    draw_detections(image, _detections(), line_width=np.int64(3), point_radius=0, n_sigma=np.float32(1.0))


def test_keypoints_are_drawn_in_their_own_convention() -> None:
    """An rfdetr checkpoint's keypoints are COCO pixel indices (coco_keypoint_offset 0.0): drawn at (x, y),
    they land where rfkp's convention (+0.5 centres) draws the same points shifted by half a pixel."""
    rfkp_style = _detections(skeleton=[(0, 1)])
    data = rfkp_style.to_dict()
    peer_style = KeypointDetections.from_dict(
        {**data, "keypoints": (np.asarray(rfkp_style.keypoints) - 0.5).tolist(), "coco_keypoint_offset": 0.0}
    )
    assert np.array_equal(_draw(peer_style), _draw(rfkp_style))
    assert not np.array_equal(_draw(KeypointDetections.from_dict({**data, "coco_keypoint_offset": 0.0})),
                              _draw(rfkp_style))
