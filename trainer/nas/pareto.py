"""The accuracy/latency Pareto front of search results, and their CSV form."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.nas.search import SearchResult

CSV_COLUMNS = (
    "resolution", "patch_size", "num_windows", "dec_layers", "num_queries", "ap", "ap50", "ar",
    "coverage_2sigma", "latency_ms_median", "latency_ms_p90", "pareto",
)  # fmt: skip


def pareto_mask(ap: Sequence[float], latency_ms: Sequence[float]) -> np.ndarray:
    """(N,) bool: True where no other point has AP >= and latency <= with at least one strictly better.

    Points with the same AP and latency do not dominate each other: all of them stay on the front. A point
    with a NaN AP or latency, or pycocotools' -1 (AP undefined: no ground truth to score), is never on the front.
    """
    a = np.asarray(ap, dtype=np.float64)
    t = np.asarray(latency_ms, dtype=np.float64)
    if a.shape != t.shape or a.ndim != 1:
        raise ValueError(f"ap and latency must be 1-D of the same length, got {a.shape} and {t.shape}")
    no_worse = (a[None, :] >= a[:, None]) & (t[None, :] <= t[:, None])  # [i, j]: j at least as good as i
    better = (a[None, :] > a[:, None]) | (t[None, :] < t[:, None])
    defined = (a >= 0) & ~np.isnan(t)  # NaN compares False
    return ~(no_worse & better).any(axis=1) & defined


def pareto_front(results: Sequence[SearchResult]) -> list[SearchResult]:
    """The non-dominated results (higher AP, lower median latency), fastest first."""
    mask = pareto_mask([r.ap for r in results], [r.latency_ms_median for r in results])
    front = [r for r, keep in zip(results, mask) if keep]
    return sorted(front, key=lambda r: (r.latency_ms_median, -r.ap))


def pick_within_budget(results: Sequence[SearchResult], budget_ms: float) -> SearchResult | None:
    """The most accurate result whose median latency is within ``budget_ms`` (the faster one on equal AP);
    None when none fits. Results without a defined AP (NaN, or pycocotools' -1) are never picked."""
    fitting = [r for r in results if r.latency_ms_median <= budget_ms and r.ap >= 0]  # NaN compares False
    return max(fitting, key=lambda r: (r.ap, -r.latency_ms_median), default=None)


def _cell(value: float | int | bool) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return "" if math.isnan(value) else f"{value:.6g}"


def write_csv(results: Sequence[SearchResult], path: str | Path) -> Path:
    """One row per result with ``CSV_COLUMNS``; ``pareto`` marks the front of ``results``. NaN is empty."""
    mask = pareto_mask([r.ap for r in results], [r.latency_ms_median for r in results])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r, on_front in zip(results, mask):
            c = r.choice
            values = (
                c.resolution, c.patch_size, c.num_windows, c.dec_layers, c.num_queries, r.ap, r.ap50, r.ar,
                r.coverage_2sigma, r.latency_ms_median, r.latency_ms_p90, bool(on_front),
            )  # fmt: skip
            writer.writerow([_cell(v) for v in values])
    return out
