"""Text and JSON forms of a ``KeypointEvaluation``."""

from __future__ import annotations

import math
from typing import Any

from trainer.evaluation.calibration import SIGMA_LEVELS, nominal_coverage
from trainer.evaluation.coco_eval import KeypointEvaluation
from trainer.evaluation.sigmas import COCO_PERSON_SIGMAS, DEFAULT_SIGMA

_SHOWN = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def _num(value: float, width: int = 7) -> str:
    return f"{'n/a' if value < 0 or math.isnan(value) else f'{value:.4f}':>{width}}"


def _pct(value: float) -> str:
    return f"{'n/a' if math.isnan(value) else f'{100 * value:.1f}%':>9}"


def _sigma_label(sigmas: Any) -> str:
    if len(sigmas) == len(COCO_PERSON_SIGMAS) and all(
        abs(a - b) < 1e-12 for a, b in zip(sigmas, COCO_PERSON_SIGMAS)
    ):
        return "COCO person"
    if all(abs(s - DEFAULT_SIGMA) < 1e-12 for s in sigmas):
        return f"default {DEFAULT_SIGMA}"
    return "custom"


def format_report(report: KeypointEvaluation) -> str:
    """Human-readable table: AP/AR per category and overall, then the 1/2/3-sigma coverage."""
    lines = [f"images: {report.num_images}   detections: {report.num_detections}", ""]
    name_width = max(12, *(len(c.name) for c in report.per_category))
    header = f"{'category':<{name_width}}" + "".join(f"{s:>7}" for s in _SHOWN) + "  sigmas"
    lines.append(header)
    for c in report.per_category:
        lines.append(
            f"{c.name:<{name_width}}"
            + "".join(_num(c.stats[s]) for s in _SHOWN)
            + f"  {_sigma_label(c.sigmas)}"
        )
    lines.append(f"{'all':<{name_width}}" + "".join(_num(report.overall[s]) for s in _SHOWN))
    lines.append("")
    if report.calibration is None:
        why = "there are no detections" if report.num_detections == 0 else "the detections carry no keypoint_covariance"
        lines.append(f"calibration: n/a ({why})")
        return "\n".join(lines)
    ideal = " / ".join(f"{100 * nominal_coverage(k):.1f}" for k in SIGMA_LEVELS)
    lines.append(f"calibration: ground-truth keypoints inside the predicted ellipses (ideal {ideal} %)")
    lines.append(f"{'':<10}" + "".join(f"{f'{k}-sigma':>9}" for k in SIGMA_LEVELS) + f"{'n':>8}")
    for kind in ("visible", "occluded"):
        coverage = report.calibration.coverage(kind)
        n = report.calibration.distances(kind).size
        lines.append(f"{kind:<10}" + "".join(_pct(coverage[k]) for k in SIGMA_LEVELS) + f"{n:>8}")
    return "\n".join(lines)


def report_to_dict(report: KeypointEvaluation) -> dict[str, Any]:
    """JSON-ready dict with full-precision numbers (coverage NaN becomes None)."""
    out: dict[str, Any] = {
        "num_images": report.num_images,
        "num_detections": report.num_detections,
        "overall": dict(report.overall),
        "per_category": [
            {"category_id": c.category_id, "name": c.name, "sigmas": c.sigmas.tolist(), **c.stats}
            for c in report.per_category
        ],
        "calibration": None,
    }
    if report.calibration is not None:
        out["calibration"] = {
            kind: {
                "count": int(report.calibration.distances(kind).size),
                **{
                    f"{k}_sigma": (None if math.isnan(v) else v)
                    for k, v in report.calibration.coverage(kind).items()
                },
            }
            for kind in ("visible", "occluded")
        }
        out["calibration"]["ideal"] = {f"{k}_sigma": nominal_coverage(k) for k in SIGMA_LEVELS}
    return out
