"""Per-keypoint OKS sigmas, one set per category.

- A category whose keypoints are COCO's 17 person keypoints (same names and order, or a category named
  ``person`` with 17 keypoints) gets COCO's sigmas (``COCO_PERSON_SIGMAS``, the pycocotools defaults).
- Any other skeleton gets ``DEFAULT_SIGMA`` for every keypoint. 0.05 sits between COCO's face (0.025-0.035)
  and body (0.062-0.107) sigmas: with OKS = exp(-d^2 / (2 s^2 (2 sigma)^2)), ``s^2`` the object area, a
  keypoint scores 0.5 when it is off by about 0.12 x sqrt(area).
- The user overrides either, per category id or name, with one sigma for all keypoints or one per keypoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from trainer.data.schema import CategorySchema, DatasetSchema
from trainer.data.values import is_finite_number, short_repr

COCO_PERSON_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
COCO_PERSON_SIGMAS = (
    np.array(
        [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
    )
    / 10.0
)
DEFAULT_SIGMA = 0.05

SigmaOverride = float | Sequence[float]


def is_coco_person(category: CategorySchema) -> bool:
    """True for COCO's 17-keypoint person skeleton."""
    if category.keypoint_names == COCO_PERSON_KEYPOINTS:
        return True
    return category.name.lower() == "person" and category.num_keypoints == len(COCO_PERSON_KEYPOINTS)


def _override_for(overrides: Mapping[int | str, SigmaOverride], category: CategorySchema) -> SigmaOverride | None:
    keys = [key for key in dict.fromkeys((category.category_id, str(category.category_id), category.name))
            if key in overrides]  # fmt: skip
    if len(keys) > 1:
        raise ValueError(
            f"category {category.category_id} ({category.name!r}) has several sigma entries {keys}; give one"
        )
    return overrides[keys[0]] if keys else None


def category_sigmas(
    schema: DatasetSchema, overrides: Mapping[int | str, SigmaOverride] | None = None
) -> dict[int, np.ndarray]:
    """Sigmas per category id: (K,) float64 arrays, K the category's keypoint count.

    Raises:
        ValueError: an override for an unknown category, of the wrong length, not numbers, or not finite and
            positive.
    """
    overrides = dict(overrides or {})
    known = {c.category_id for c in schema.categories} | {str(c.category_id) for c in schema.categories}
    known |= {c.name for c in schema.categories}
    unknown = [key for key in overrides if key not in known]
    if unknown:
        raise ValueError(
            f"sigma overrides for unknown categories {unknown}; categories are {schema.class_names}"
        )
    ids = {str(c.category_id): c for c in schema.categories}
    for c in schema.categories:  # JSON keys are strings: "1" could be one category's id and another's name
        if c.name in overrides and c.name in ids and ids[c.name] is not c:
            raise ValueError(
                f"sigma key {c.name!r} is category {c.category_id}'s name and category {c.name}'s id; "
                "key these categories by the other (id or name)"
            )
    out: dict[int, np.ndarray] = {}
    for category in schema.categories:
        override = _override_for(overrides, category)
        where = f"category {category.category_id} ({category.name!r})"
        if override is None:
            sigmas = (
                COCO_PERSON_SIGMAS
                if is_coco_person(category)
                else np.full(category.num_keypoints, DEFAULT_SIGMA)
            )
        elif isinstance(override, (int, float)) and not isinstance(override, bool):
            if not is_finite_number(override):  # an integer too large for a float, say
                raise ValueError(f"{where}: sigmas must be finite and > 0, got {short_repr(override)}")
            sigmas = np.full(category.num_keypoints, float(override))
        else:
            try:
                sigmas = np.asarray(list(override), dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{where}: sigmas must be a number or a list of numbers, got {override!r}") from None
            if sigmas.shape != (category.num_keypoints,):
                raise ValueError(
                    f"{where}: {sigmas.size} sigmas given for {category.num_keypoints} keypoints "
                    f"({list(category.keypoint_names)})"
                )
        if not all(math.isfinite(s) and s > 0 for s in sigmas):
            raise ValueError(f"{where}: sigmas must be finite and > 0, got {list(sigmas)}")
        out[category.category_id] = np.array(sigmas, dtype=np.float64)
    return out
