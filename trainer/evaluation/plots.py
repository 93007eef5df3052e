"""Reliability plots of the keypoint Gaussians (matplotlib, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from trainer.evaluation.calibration import SIGMA_LEVELS, CalibrationResult, nominal_coverage

#: Nominal probabilities on the x axis of the reliability plot.
RELIABILITY_LEVELS = np.linspace(0.02, 0.99, 50)


def _draw(curves: Iterable[tuple[str, CalibrationResult, str, str]], path: str | Path, title: str, ylabel: str) -> Path:
    """One figure: the diagonal, then per (label, result, kind, colour) the reliability curve of ``kind`` with dots
    at the 1/2/3-sigma ellipses (curves without keypoints are left out)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="ideal")
    for label, result, kind, colour in curves:
        n = result.distances(kind).size
        if not n:
            continue
        ax.plot(RELIABILITY_LEVELS, result.reliability(kind, RELIABILITY_LEVELS), color=colour, label=f"{label} (n={n})")
        for k in SIGMA_LEVELS:
            ax.scatter([nominal_coverage(k)], [result.coverage(kind, [k])[k]], color=colour, zorder=3)
    for k in SIGMA_LEVELS:
        ax.axvline(nominal_coverage(k), color="0.85", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage of the predicted ellipse")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def reliability_plot(
    result: CalibrationResult, path: str | Path, title: str = "Keypoint calibration"
) -> Path:
    """Write a PNG: empirical vs nominal coverage of the predicted ellipses, visible and occluded keypoints.

    A calibrated model lies on the diagonal; above it the ellipses are too large, below too small.
    """
    curves = [(kind, result, kind, colour) for kind, colour in (("visible", "tab:blue"), ("occluded", "tab:orange"))]
    return _draw(curves, path, title, "fraction of ground-truth keypoints inside")


def reliability_comparison_plot(
    results: dict[str, CalibrationResult], path: str | Path, kind: str = "visible",
    title: str = "Keypoint calibration",
) -> Path:
    """Write a PNG with one reliability curve per labelled result (e.g. before and after calibration) for the
    keypoints of ``kind``."""
    colours = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown")
    curves = [(label, result, kind, colour) for (label, result), colour in zip(results.items(), colours)]
    return _draw(curves, path, title, f"fraction of {kind} ground-truth keypoints inside")
