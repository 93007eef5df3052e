"""The accuracy/latency Pareto front, its CSV and its plot, on hand-made results."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from trainer.nas.pareto import CSV_COLUMNS, pareto_front, pareto_mask, write_csv
from trainer.nas.plot import pareto_plot
from trainer.nas.search import SearchResult
from trainer.nas.space import ArchChoice


def _result(ap: float, ms: float, queries: int) -> SearchResult:
    return SearchResult(ArchChoice(256, 16, 2, 2, queries), ap, ap + 0.1, ap + 0.05, 0.8, ms, 1.2 * ms,
                        {"person": ap}, 10, "Test GPU")  # fmt: skip


# (AP, median ms, on the front?)
POINTS = [
    (0.50, 10.0, True),
    (0.50, 10.0, True),  # exact tie with the first: neither dominates
    (0.60, 20.0, True),
    (0.60, 20.0, True),
    (0.40, 15.0, False),  # worse and slower than (0.5, 10)
    (0.50, 12.0, False),  # same AP, slower
    (0.60, 25.0, False),  # same AP, slower
    (0.45, 10.0, False),  # same speed, lower AP
    (0.70, 30.0, True),
    (0.30, 5.0, True),
    (math.nan, 1.0, False),  # undefined AP: never on the front
    (-1.0, 0.5, False),  # pycocotools' undefined AP (no ground truth): never on the front, though fastest
]


def test_pareto_mask_and_front_on_hand_made_points() -> None:
    ap, ms, expected = zip(*POINTS)
    assert pareto_mask(ap, ms).tolist() == list(expected)
    results = [_result(a, t, q) for q, (a, t, _) in enumerate(POINTS, start=1)]
    front = pareto_front(results)
    assert [(r.ap, r.latency_ms_median) for r in front] == [(0.3, 5.0), (0.5, 10.0), (0.5, 10.0), (0.6, 20.0),
                                                            (0.6, 20.0), (0.7, 30.0)]  # fmt: skip
    assert pareto_front([]) == [] and pareto_mask([], []).shape == (0,)
    assert pareto_mask([0.1], [3.0]).tolist() == [True]
    with pytest.raises(ValueError, match="same length"):
        pareto_mask([0.1, 0.2], [1.0])


def test_pareto_mask_matches_brute_force_on_random_points() -> None:
    rng = np.random.default_rng(0)
    ap = rng.integers(0, 6, 200) / 10  # many ties
    ms = rng.integers(1, 8, 200).astype(float)
    mask = pareto_mask(ap, ms)
    for i in range(len(ap)):
        dominated = any(
            ap[j] >= ap[i] and ms[j] <= ms[i] and (ap[j] > ap[i] or ms[j] < ms[i]) for j in range(len(ap))
        )
        assert mask[i] == (not dominated)


def test_csv_has_the_columns_and_marks_the_front(tmp_path: Path) -> None:
    results = [_result(a, t, q) for q, (a, t, _) in enumerate(POINTS, start=1)]
    path = write_csv(results, tmp_path / "sub" / "search.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == len(POINTS)
    assert [r["pareto"] == "True" for r in rows] == [p[2] for p in POINTS]
    assert rows[2] == {"resolution": "256", "patch_size": "16", "num_windows": "2", "dec_layers": "2",
                       "num_queries": "3", "ap": "0.6", "ap50": "0.7", "ar": "0.65", "coverage_2sigma": "0.8",
                       "latency_ms_median": "20", "latency_ms_p90": "24", "pareto": "True"}  # fmt: skip
    assert rows[-2]["ap"] == ""  # NaN is written as an empty cell


def test_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = [_result(a, t, q) for q, (a, t, _) in enumerate(POINTS[:-2], start=1)]
    path = pareto_plot(results, tmp_path / "pareto.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="no search results"):
        pareto_plot([], tmp_path / "empty.png")
