"""Drawing ``KeypointDetections`` onto an image with PIL: boxes, skeletons, keypoints, covariance ellipses.

Conventions: keypoints and covariances are in pixel coordinates with pixel centres at +0.5, so a point
(x, y) is drawn at PIL position (x - 0.5, y - 0.5); keypoints of an rfdetr checkpoint keep COCO's pixel indices
(``coco_keypoint_offset`` 0.0) and are drawn at (x, y). Per keypoint, by its probabilities:

- findable < ``findable_threshold``: nothing is drawn (no dot, no ellipse, no skeleton edge);
- findable, visible >= ``visible_threshold``: filled dot and a solid ``n_sigma`` covariance ellipse;
- findable but occluded: hollow dot and a dashed ellipse.

Skeleton edges join two findable keypoints. Each class has its own colour. Ellipses with a non-finite or
huge semi-major axis (over 100 times the image size) are not drawn; their dots are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from rfkp.detections import KeypointDetections
from rfkp.io import ImageSource, load_image, to_tensor
from rfkp.ops.gaussian import ellipse_axes

__all__ = ["CLASS_COLOURS", "draw_detections", "ellipse_points"]

Colour = tuple[int, int, int]

CLASS_COLOURS: tuple[Colour, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (0, 0, 128), (255, 225, 25),
)  # fmt: skip
"""Default class colours (index ``class_id % 16``)."""

_DASH_ON, _DASH_OFF = 4.0, 3.0  # dashed-ellipse pattern along the outline, in line widths
_MAX_OUTLINE_POINTS = 8192
_MAX_ELLIPSE_TO_IMAGE = 100.0


def ellipse_points(
    centre: tuple[float, float], semi_major: float, semi_minor: float, angle: float, step: float = 1.0
) -> np.ndarray:
    """Closed outline of an ellipse sampled about every ``step`` pixels of arc length.

    Args:
        centre: (x, y) in pixels.
        semi_major, semi_minor: semi-axes in pixels; angle: of the major axis from +x in radians (y down).

    Returns:
        (M + 1, 2) float64 (x, y) points; the last equals the first.
    """
    perimeter = math.pi * (3 * (semi_major + semi_minor) - math.sqrt(
        max((3 * semi_major + semi_minor) * (semi_major + 3 * semi_minor), 0.0)))  # Ramanujan
    count = min(_MAX_OUTLINE_POINTS, max(24, int(math.ceil(perimeter / step))))
    t = np.linspace(0.0, 2.0 * math.pi, count + 1)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u, v = semi_major * np.cos(t), semi_minor * np.sin(t)
    return np.stack([centre[0] + u * cos_a - v * sin_a, centre[1] + u * sin_a + v * cos_a], axis=1)


def _draw_outline(
    draw: ImageDraw.ImageDraw, points: np.ndarray, colour: Colour, width: int, dashed: bool, offset: float
) -> None:
    pts = points - offset  # keypoint coordinates -> PIL pixel indices (see draw_detections)
    if not dashed:
        draw.line([tuple(p) for p in pts], fill=colour, width=width, joint="curve")
        return
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
    on = (arc[:-1] % ((_DASH_ON + _DASH_OFF) * width)) < _DASH_ON * width
    for i in np.flatnonzero(on):
        draw.line([tuple(pts[i]), tuple(pts[i + 1])], fill=colour, width=width)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # older PIL or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: Colour, size: int) -> None:
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x, y = xy[0], xy[1] - h if xy[1] - h >= 0 else xy[1]
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def _check_drawing_options(
    findable_threshold: float, visible_threshold: float, n_sigma: float, line_width: int | None,
    point_radius: int | None,
) -> None:
    """Refuses option values that would draw nothing sensible (or make PIL fail deep inside)."""
    for name, value in (("findable_threshold", findable_threshold), ("visible_threshold", visible_threshold)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    if isinstance(n_sigma, bool) or not isinstance(n_sigma, numbers.Real) or not 0.0 < n_sigma < math.inf:
        raise ValueError(f"n_sigma must be a positive finite number, got {n_sigma!r}")
    for name, value, low in (("line_width", line_width, 1), ("point_radius", point_radius, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low):
            raise ValueError(f"{name} must be an int >= {low} (pixels) or None for the default, got {value!r}")


def draw_detections(
    image: ImageSource | torch.Tensor,
    detections: KeypointDetections,
    *,
    findable_threshold: float = 0.5,
    visible_threshold: float = 0.5,
    n_sigma: float = 2.0,
    line_width: int | None = None,
    point_radius: int | None = None,
    draw_boxes: bool = True,
    draw_labels: bool = True,
    colours: Sequence[Colour] = CLASS_COLOURS,
) -> Image.Image:
    """Draw detections onto a copy of ``image``.

    Args:
        image: anything ``RFDETRKeypoint.predict`` accepts (a path, bytes, PIL image, uint8 array or (3, H, W)
            tensor); its (H, W) must equal ``detections.image_size``.
        detections: in pixel coordinates of ``image``.
        findable_threshold, visible_threshold: probability thresholds (see the module docstring).
        n_sigma: covariance ellipse size in standard deviations (2 covers about 86% of a 2-D Gaussian).
        line_width, point_radius: in pixels; by default scaled to the image size.
        draw_boxes, draw_labels: draw boxes / "class score" labels at the boxes' top-left corners.
        colours: RGB colour per class index (cycled).

    Returns:
        A new RGB ``PIL.Image.Image`` of the input's size.
    """
    if isinstance(image, torch.Tensor):  # (3, H, W) float in [0, 1] or uint8, on any device
        rgb = to_tensor(image).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    else:
        rgb = load_image(image)
    if rgb.shape[:2] != tuple(detections.image_size):
        raise ValueError(
            f"image is {rgb.shape[0]}x{rgb.shape[1]} (H x W) but detections are for {detections.image_size}"
        )
    if not colours:
        raise ValueError("colours must not be empty")
    _check_drawing_options(findable_threshold, visible_threshold, n_sigma, line_width, point_radius)
    canvas = Image.fromarray(np.array(rgb, copy=True))
    draw = ImageDraw.Draw(canvas)
    width = line_width if line_width is not None else max(2, round(max(rgb.shape[:2]) / 400))
    radius = point_radius if point_radius is not None else width + 1
    max_axis = _MAX_ELLIPSE_TO_IMAGE * max(rgb.shape[:2])
    findable = np.nan_to_num(detections.findable, nan=0.0) >= findable_threshold
    visible = findable & (np.nan_to_num(detections.visible, nan=0.0) >= visible_threshold)
    major, minor, angle = (
        t.numpy() for t in ellipse_axes(torch.from_numpy(detections.covariance.astype(np.float64)), n_sigma)
    )
    # rfkp's keypoints put pixel centres at +0.5 (offset 0.5); an rfdetr checkpoint's keep COCO's pixel indices
    offset = float(detections.coco_keypoint_offset)
    for i in range(len(detections)):
        c = int(detections.class_id[i])
        colour = tuple(int(v) for v in colours[c % len(colours)])
        if draw_boxes:
            draw.rectangle(detections.xyxy[i].tolist(), outline=colour, width=width)
        kp = detections.keypoints[i] - offset
        for a, b in detections.skeletons[c]:
            if findable[i, a] and findable[i, b]:
                draw.line([tuple(kp[a]), tuple(kp[b])], fill=colour, width=width)
        for k in np.flatnonzero(findable[i]):
            if np.isfinite([major[i, k], minor[i, k], angle[i, k]]).all() and major[i, k] <= max_axis:
                outline = ellipse_points(tuple(detections.keypoints[i, k]), major[i, k], minor[i, k], angle[i, k])
                _draw_outline(draw, outline, colour, width, dashed=not visible[i, k], offset=offset)
            box = [kp[k, 0] - radius, kp[k, 1] - radius, kp[k, 0] + radius, kp[k, 1] + radius]
            if visible[i, k]:
                draw.ellipse(box, fill=colour, outline=(255, 255, 255), width=1)
            else:
                draw.ellipse(box, fill=None, outline=colour, width=max(1, width // 2 + 1))
    if draw_labels:
        for i in range(len(detections)):
            c = int(detections.class_id[i])
            colour = tuple(int(v) for v in colours[c % len(colours)])
            label = f"{detections.class_names[c]} {float(detections.score[i]):.2f}"
            x1, y1 = detections.xyxy[i, :2].tolist()
            _draw_label(draw, (x1, y1), label, colour, size=max(10, 6 * width))
    return canvas
