"""Checks of values read from JSON files (annotations, results, sigmas): COCO ids, finite numbers, and values
shortened for messages."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["ID_EXPECTED", "is_coco_id", "is_finite_number", "is_int", "short_repr"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
ID_EXPECTED = "an integer in the int64 range"


def is_int(value: Any) -> bool:
    """A Python int that is not a bool (JSON integers)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_coco_id(value: Any, *, integral_floats: bool = False) -> bool:
    """An id as COCO tools hold them: an integer in the int64 range (numpy and pycocotools use int64). With
    ``integral_floats``, also a float with an integer value (``785.0``: what pandas writes; it hashes and
    compares equal to ``785``, so pycocotools treats it as that id)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (numbers.Integral, np.integer)):
        return _INT64_MIN <= int(value) <= _INT64_MAX
    if integral_floats and isinstance(value, (float, np.floating)) and math.isfinite(value) and value.is_integer():
        return _INT64_MIN <= value <= _INT64_MAX
    return False


def is_finite_number(value: Any) -> bool:
    """A real, finite number (numpy scalars too), not a bool; False for an integer too large for a float (JSON
    has no size limit), rather than an OverflowError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut in the middle to at most about ``limit`` characters (a bad file can hold huge
    values, and an error message names them)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"
