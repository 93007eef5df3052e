"""COCO keypoint result rows: checking them, and making them from ``KeypointDetections``.

A row is COCO's keypoint result format, ``{"image_id", "category_id", "keypoints": [x, y, v] * K, "score"}``
(K of the category, COCO pixel-index coordinates, ``v`` unused by the evaluation), plus optional fields:
``keypoint_covariance`` (K, 2, 2) pixels^2 (needed for calibration), ``keypoint_findable`` and
``keypoint_visible`` (K,) probabilities. A ``segmentation`` is dropped unread: keypoint evaluation does not use
it, and pycocotools would try to decode it (and read the first row's for every row).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rfkp.detections import COVARIANCE_KEY, FINDABLE_KEY, VISIBLE_KEY
from trainer.data.schema import CategorySchema, DatasetSchema
from trainer.data.values import ID_EXPECTED, is_coco_id, is_finite_number, short_repr

if TYPE_CHECKING:
    from rfkp.detections import KeypointDetections

logger = logging.getLogger(__name__)

_REQUIRED = ("image_id", "category_id", "keypoints", "score")
#: Keys of result rows that keypoint evaluation does not use and pycocotools' ``loadRes`` would choke on.
_DROPPED = ("segmentation",)


def _finite(values: Any) -> bool:
    """Finite numbers only (flat or nested lists of them, or numeric numpy arrays); iterative, so no nesting
    depth makes it fail."""
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "iuf" or not np.isfinite(value).all():
                return False
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif not is_finite_number(value):
            return False
    return True


def _check_covariance(value: Any, num_keypoints: int, where: str) -> None:
    if not _finite(value):
        raise ValueError(f"{where}: '{COVARIANCE_KEY}' must hold finite numbers only")
    try:
        cov = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: '{COVARIANCE_KEY}' is not numeric: {err}") from err
    if cov.shape != (num_keypoints, 2, 2):
        raise ValueError(
            f"{where}: '{COVARIANCE_KEY}' has shape {cov.shape}, expected ({num_keypoints}, 2, 2)"
        )
    if not np.isfinite(cov).all():
        raise ValueError(f"{where}: '{COVARIANCE_KEY}' has non-finite values")
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    bad = np.flatnonzero((cov[:, 0, 0] <= 0) | (det <= 0) | ~np.isclose(cov[:, 0, 1], cov[:, 1, 0]))
    if bad.size:
        raise ValueError(
            f"{where}: '{COVARIANCE_KEY}' of keypoint {int(bad[0])} is not symmetric positive definite"
        )


def _check_keypoints(values: Any, k: int, where: str) -> None:
    """A result row's ``keypoints``: a flat list of 3 x ``k`` finite numbers (``x, y, v`` per keypoint)."""
    if not isinstance(values, (list, tuple)) or any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        got = "nested lists" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
        raise ValueError(f"{where}: 'keypoints' must be a flat list of {3 * k} numbers (x, y, v for each of {k} "
                         f"keypoints), got {got}")  # fmt: skip
    if len(values) != 3 * k:
        raise ValueError(f"{where}: 'keypoints' has {len(values)} values, expected {3 * k} (3 x {k} keypoints)")
    if not all(is_finite_number(v) for v in values):
        raise ValueError(f"{where}: 'keypoints' must be a flat list of finite numbers")


def _check_box(box: Any, where: str) -> None:
    """A result row's ``bbox``: ``[x, y, width, height]`` or ``[]`` (pycocotools' "no box"). pycocotools takes the
    detection's area from it, and a negative area puts an unmatched detection outside every area range, where
    it is ignored instead of counted as a false positive."""
    if not (isinstance(box, (list, tuple)) and (len(box) == 0 or (len(box) == 4 and all(is_finite_number(b) for b in box)))):
        raise ValueError(f"{where}: 'bbox' must be [x, y, width, height] with 4 finite numbers, or []")
    if box and (box[2] < 0 or box[3] < 0):
        raise ValueError(f"{where}: 'bbox' {list(box)} has a negative width or height; both must be >= 0")


def check_results(
    results: Sequence[Mapping[str, Any]], image_ids: set[int], schema: DatasetSchema, source: str | None = None
) -> list[dict[str, Any]]:
    """Validate result rows and return deep copies (pycocotools writes into the rows it loads), without the keys
    keypoint evaluation does not use (``segmentation``). ``source``, the results file, starts every message.

    Raises:
        ValueError: naming the row index and what is wrong (missing key, unknown image or category id,
            keypoints of the wrong length, non-finite values, a box with a negative width or height, a bad
            covariance, covariance on some rows only).
    """
    categories = {c.category_id: c for c in schema.categories}
    prefix = f"{source}: " if source else ""
    with_cov = 0
    for i, row in enumerate(results):
        where = f"{prefix}result row {i}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: must be an object, got {type(row).__name__}")
        for key in _REQUIRED:
            if key not in row:
                raise ValueError(f"{where}: missing key '{key}'")
        for key in ("image_id", "category_id"):
            if not is_coco_id(row[key], integral_floats=True):
                raise ValueError(f"{where}: '{key}' must be {ID_EXPECTED}, got {short_repr(row[key])}")
        where += f" (image id {row['image_id']})"
        if row["image_id"] not in image_ids:
            raise ValueError(f"{where}: image id not in the ground truth")
        if row["category_id"] not in categories:
            raise ValueError(
                f"{where}: unknown category id {row['category_id']!r}; known ids {sorted(categories)}"
            )
        k = categories[row["category_id"]].num_keypoints
        _check_keypoints(row["keypoints"], k, where)
        if not _finite(row["score"]) or np.ndim(row["score"]) != 0:
            raise ValueError(f"{where}: 'score' must be a finite number, got {short_repr(row['score'])}")
        if i and ("bbox" in row) != ("bbox" in results[0]):  # pycocotools reads the first row's keys for all
            raise ValueError(f"{where}: 'bbox' is given on some rows only; give it on all or none")
        if "bbox" in row:
            _check_box(row["bbox"], where)
        if COVARIANCE_KEY in row:
            _check_covariance(row[COVARIANCE_KEY], k, where)
            with_cov += 1
    if 0 < with_cov < len(results):
        raise ValueError(
            f"{prefix}{with_cov} of {len(results)} result rows carry '{COVARIANCE_KEY}'; give it on all or none"
        )
    rows = [copy.deepcopy({k: v for k, v in row.items() if k not in _DROPPED}) for row in results]
    for row in rows:  # integral float ids (785.0) as the ints they stand for
        row["image_id"], row["category_id"] = int(row["image_id"]), int(row["category_id"])
    return rows


def class_categories(
    class_names: Sequence[str], schema: DatasetSchema, num_keypoints_per_class: Sequence[int] | None = None
) -> list[CategorySchema | None]:
    """For each model class, the dataset category of the same name (None when the dataset has none). Dataset
    categories no class matches are logged as a warning: their objects are then counted as missed.

    Args:
        num_keypoints_per_class: the model's K per keypointed class; when given, a matched category with
            another K is refused here, before any image is run.

    Raises:
        ValueError: no class name matches a category, a class name is shared by several categories, or a
            matched category has another keypoint count.
    """
    shared = {name: ids for name, ids in schema.shared_names().items() if name in class_names}
    if shared:
        name, ids = next(iter(shared.items()))
        raise ValueError(
            f"dataset categories {ids} share the name {name!r}: the model's class of that name matches no single "
            "category (classes are matched to categories by name); give the categories distinct names"
        )
    by_name = {c.name: c for c in schema.categories}
    mapping = [by_name.get(name) for name in class_names]
    if not any(mapping):
        raise ValueError(
            f"no model class {list(class_names)} matches a dataset category {schema.class_names}"
        )
    for c, (name, category) in enumerate(zip(class_names, mapping)):
        k = num_keypoints_per_class[c] if num_keypoints_per_class is not None and c < len(num_keypoints_per_class) \
            else None  # fmt: skip
        if category is not None and k is not None and k != category.num_keypoints:
            raise ValueError(
                f"model class {c} ({name!r}) has {k} keypoints but dataset category {category.category_id} "
                f"({category.name!r}) has {category.num_keypoints}"
            )
    unmatched = [c.name for c in schema.categories if c.name not in set(class_names)]
    if unmatched:
        logger.warning("dataset categories %s match no model class: their objects count as missed", unmatched)
    return mapping


def detections_to_results(
    detections: KeypointDetections, image_id: int, categories: Sequence[CategorySchema | None]
) -> list[dict[str, Any]]:
    """Result rows of one image's detections, keypoints in COCO's convention (pixel indices: the detections'
    keypoints minus their ``coco_keypoint_offset``).

    Args:
        categories: per class id, its dataset category (see ``class_categories``); detections of classes
            without one are left out.

    Raises:
        ValueError: a detected class whose keypoint count differs from its category's.
    """
    rows: list[dict[str, Any]] = []
    for n in range(len(detections.class_id)):
        class_id = int(detections.class_id[n])
        category = categories[class_id] if class_id < len(categories) else None
        if category is None:
            continue
        k = category.num_keypoints
        if len(detections.keypoint_names[class_id]) != k:
            raise ValueError(
                f"model class {class_id} ({detections.class_names[class_id]!r}) has "
                f"{len(detections.keypoint_names[class_id])} keypoints but dataset category "
                f"{category.category_id} ({category.name!r}) has {k}"
            )
        xy = np.asarray(detections.keypoints[n], np.float64)
        coco_xy = xy[:k] - detections.coco_keypoint_offset  # 0.5 for models rfkp trained
        flat = np.concatenate([coco_xy, np.ones((k, 1))], axis=1).reshape(-1)
        rows.append(
            {
                "image_id": int(image_id),
                "category_id": category.category_id,
                "keypoints": [float(v) for v in flat],
                "score": float(detections.score[n]),
                COVARIANCE_KEY: np.asarray(detections.covariance[n][:k], np.float64).tolist(),
                FINDABLE_KEY: [float(p) for p in detections.findable[n][:k]],
                VISIBLE_KEY: [float(p) for p in detections.visible[n][:k]],
            }
        )
    return rows
