"""argparse ``type=`` functions of every ``rfkp`` command: numbers checked while the command line is parsed, so
a bad option fails (``rfkp CMD: error: argument --x: ...``, exit 2) before any model is loaded, data read or
file written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "float_in",
    "non_negative_float",
    "non_empty_path",
    "path_option",
    "non_negative_int",
    "port",
    "positive_float",
    "positive_int",
    "positive_int_list",
    "probability",
    "queue_delay_us",
    "seed_int",
]

# Longest dynamic-batching delay accepted (1 minute): more is a typo for a real-time server, and Triton's
# configuration parser refuses values beyond its integer range
MAX_QUEUE_DELAY_US = 60_000_000


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    """A finite float; NaN and infinities are refused (they would reach the optimiser or the file unnoticed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _checked(name: str, parse: Callable[[str], float], ok: Callable[[float], bool], expected: str) -> Callable:
    def check(text: str):  # noqa: ANN202 - int or float, as `parse`
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    check.__name__ = name
    return check


positive_int = _checked("positive_int", _int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _checked("non_negative_int", _int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked("positive_float", _float, lambda v: v > 0.0, "a finite number > 0")
non_negative_float = _checked("non_negative_float", _float, lambda v: v >= 0.0, "a finite number >= 0")
port = _checked("port", _int, lambda v: 0 <= v <= 65535, "a port in 0..65535 (0: a free one)")
probability = _checked("probability", _float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 1, e.g. ``4,8``."""
    try:
        values = tuple(positive_int(part.strip()) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}") from None
    return values


#: Seeds are drawn into 32-bit generator keys: larger ones would alias smaller ones.
seed_int = _checked("seed_int", _int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)")
queue_delay_us = _checked("queue_delay_us", _int, lambda v: 0 <= v <= MAX_QUEUE_DELAY_US,
                          f"microseconds in 0..{MAX_QUEUE_DELAY_US} (at most a minute)")


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
             why: str = "") -> Callable[[str], float]:
    """A ``type=`` function for finite numbers in the interval from ``low`` to ``high`` (ends closed unless
    ``low_open`` / ``high_open``); ``why`` is added to the message."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        value = _float(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):
            raise argparse.ArgumentTypeError(f"expected a number in {interval}{why}, got {text}")
        return value

    return parse


def non_empty_path(text: str) -> str:
    """A path option's value; an empty one (``--weights "$W"`` with W unset) is refused rather than taken as
    "not given"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string (an unset variable?)")
    return text


def path_option(text: str) -> Path:
    """``non_empty_path`` as a ``Path``: what the trainer's commands take."""
    return Path(non_empty_path(text))
