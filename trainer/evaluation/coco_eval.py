"""COCO OKS keypoint AP/AR per category, through pycocotools, with per-category sigmas.

pycocotools' ``COCOeval`` takes one sigma vector for all categories, so each category is evaluated on its
own (``catIds = [c]``, its own ``kpt_oks_sigmas``) over all images of the ground truth (images without
objects included: their detections are false positives). Categories are independent in COCO's
accumulation, so the overall numbers come from pycocotools' own ``summarize`` over the per-category
precision/recall arrays put side by side: exactly what one ``COCOeval`` run would give if it supported
per-category sigmas. Stats are COCO's ten keypoint numbers; -1 means undefined (no ground truth).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from trainer.data.schema import DatasetSchema, infer_schema
from trainer.data.validate import validate_coco
from trainer.evaluation.calibration import (
    COVARIANCE_KEY,
    CalibrationResult,
    KeypointErrors,
    keypoint_errors,
    matched_pairs,
)
from trainer.evaluation.results import check_results
from trainer.evaluation.sigmas import SigmaOverride, category_sigmas

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: The annotation's id in the file, kept beside the 1..N id ``ground_truth_for_eval`` gives pycocotools.
SOURCE_ID_KEY = "source_id"


@dataclass(frozen=True)
class CategoryScores:
    category_id: int
    name: str
    sigmas: np.ndarray
    stats: dict[str, float]


@dataclass(frozen=True)
class KeypointEvaluation:
    """Result of ``evaluate_keypoints``.

    Attributes:
        overall: the ten COCO keypoint stats over all categories.
        per_category: the same per category, in class-index order.
        calibration: None when the detections carry no ``keypoint_covariance``.
        errors: the per-keypoint rows behind ``calibration`` (``rfkp calibrate`` fits on them), or None.
        num_images / num_detections: what was evaluated.
    """

    overall: dict[str, float]
    per_category: list[CategoryScores]
    calibration: CalibrationResult | None
    num_images: int
    num_detections: int
    errors: KeypointErrors | None = None


@functools.cache
def _warn_once(message: str) -> None:
    """Log ``message`` the first time only: training and ``rfkp search`` evaluate the same file many times."""
    logger.warning(message)


def ground_truth_for_eval(coco: Mapping[str, Any], source: str = "<coco>") -> dict[str, Any]:
    """A copy of a validated COCO dict with the fields pycocotools needs filled in.

    ``iscrowd`` defaults to 0, ``num_keypoints`` to the count of ``v > 0``, ``area`` to the box area (COCO's
    area is the segment area; files without it get the box area, documented in docs/training.md). An area of
    0 (written by exporters without segmentations) is taken as missing, with one warning naming ``source`` and
    the count: pycocotools divides by it, so it made every OKS of the annotation 0.
    Annotation ids become 1..N in file order: pycocotools records a match by the ground truth's id and takes
    0 for "no match" (an annotation with id 0 would count as missed) and only ids > 0 as taken (one with a
    negative id could be matched twice). The file's own id is kept under ``SOURCE_ID_KEY``.
    """
    gt = copy.deepcopy(dict(coco))
    without_area = 0
    for number, ann in enumerate(gt["annotations"], start=1):
        ann[SOURCE_ID_KEY], ann["id"] = ann["id"], number
        ann.setdefault("iscrowd", 0)
        ann.setdefault("num_keypoints", sum(1 for v in ann["keypoints"][2::3] if v > 0))
        if "area" in ann and ann["area"] <= 0:
            without_area += 1
            del ann["area"]
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    if without_area:
        _warn_once(f"{source}: {without_area} of {len(gt['annotations'])} annotations have area 0; their box area "
                   "(width x height) is used for the OKS instead, as for a missing area")
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    return gt


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(coco_gt: COCO, rows: list[dict[str, Any]]) -> COCO:
    if rows:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(rows)
    empty = {k: coco_gt.dataset[k] for k in ("images", "categories")}
    return _coco({**empty, "annotations": []})


def _summarize(evaluator: COCOeval) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return dict(zip(STAT_NAMES, (float(s) for s in evaluator.stats)))


def evaluate_keypoints(
    coco: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    sigmas: Mapping[int | str, SigmaOverride] | None = None,
    source: str = "<coco>",
    schema: DatasetSchema | None = None,
    results_source: str | None = None,
) -> KeypointEvaluation:
    """Evaluate COCO keypoint result rows against a COCO keypoint ground truth.

    Args:
        coco: the ground-truth COCO dict (validated here).
        results: COCO keypoint result rows (see ``trainer.evaluation.results``).
        sigmas: per-category sigma overrides by category id or name (see ``trainer.evaluation.sigmas``).
        source: file name for error messages.
        schema: the schema, when already inferred.
        results_source: the results file, named in errors about its rows.

    Raises:
        CocoFormatError: a bad ground truth. ValueError: bad result rows or sigmas.
    """
    schema = schema or infer_schema(coco, source)
    validate_coco(coco, schema, source)
    sigma_by_category = category_sigmas(schema, sigmas)
    coco_gt = _coco(ground_truth_for_eval(coco, source))
    image_ids = sorted(coco_gt.getImgIds())
    rows = check_results(results, set(image_ids), schema, results_source)
    coco_dt = _load_results(coco_gt, rows)
    with_covariance = bool(rows) and COVARIANCE_KEY in rows[0]

    per_category: list[CategoryScores] = []
    evaluators: list[COCOeval] = []
    errors: list[KeypointErrors] = []
    for category in schema.categories:
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.catIds = [category.category_id]
        evaluator.params.imgIds = image_ids
        evaluator.params.kpt_oks_sigmas = sigma_by_category[category.category_id]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        stats = _summarize(evaluator)
        per_category.append(
            CategoryScores(
                category.category_id, category.name, sigma_by_category[category.category_id], stats
            )
        )
        evaluators.append(evaluator)
        if with_covariance:
            errors.append(keypoint_errors(matched_pairs(evaluator), coco_gt.anns, coco_dt.anns))

    combined = COCOeval(coco_gt, coco_dt, iouType="keypoints")
    combined.params.catIds = list(schema.category_ids)
    combined.params.imgIds = image_ids
    combined.eval = {
        "params": combined.params,
        "precision": np.concatenate([e.eval["precision"] for e in evaluators], axis=2),
        "recall": np.concatenate([e.eval["recall"] for e in evaluators], axis=1),
        "scores": np.concatenate([e.eval["scores"] for e in evaluators], axis=2),
    }
    all_errors = KeypointErrors.concatenate(errors) if with_covariance else None
    return KeypointEvaluation(
        overall=_summarize(combined),
        per_category=per_category,
        calibration=None if all_errors is None else all_errors.calibration(),
        num_images=len(image_ids),
        num_detections=len(rows),
        errors=all_errors,
    )
