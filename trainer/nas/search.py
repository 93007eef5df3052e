"""Score sub-architectures of one weight-sharing model: OKS AP on a validation set and batch-1 latency.

Each choice runs the same weights with different call-time knobs (``RFDETRKeypoint.forward_raw(x, **arch)``),
so the search needs no retraining. Images are decoded and resized once per resolution, and every choice of
that resolution reuses the tensors.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainer.data.schema import DatasetSchema
from trainer.data.validate import check_image_files, check_image_sizes, load_labelled_coco
from trainer.evaluation.coco_eval import evaluate_keypoints
from trainer.evaluation.predict import naming_dataset_images
from trainer.evaluation.results import class_categories, detections_to_results
from trainer.evaluation.sigmas import SigmaOverride
from trainer.nas.space import ArchChoice

if TYPE_CHECKING:
    from rfkp.api import RFDETRKeypoint

#: Images per forward pass when predicting the validation set (latency is always measured at batch 1).
PREDICT_BATCH = 8


@dataclass(frozen=True)
class SearchResult:
    """Accuracy and speed of one choice.

    ap / ap50 / ar: COCO OKS stats over all categories (-1 when undefined). coverage_2sigma: fraction of
    matched ground-truth keypoints inside the predicted 2-sigma ellipse (NaN when there are none). Latency in
    milliseconds of ``forward_raw`` + ``postprocess`` on one image, measured on ``device``.
    """

    choice: ArchChoice
    ap: float
    ap50: float
    ar: float
    coverage_2sigma: float
    latency_ms_median: float
    latency_ms_p90: float
    ap_per_category: dict[str, float] = field(default_factory=dict)
    num_detections: int = 0
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        out: dict[str, Any] = {**self.choice.as_dict()}
        for name in ("ap", "ap50", "ar", "coverage_2sigma", "latency_ms_median", "latency_ms_p90"):
            value = getattr(self, name)
            out[name] = None if math.isnan(value) else value
        out["ap_per_category"] = dict(self.ap_per_category)
        out["num_detections"] = self.num_detections
        out["device"] = self.device
        return out


def device_name(device: torch.device) -> str:
    """The name of the device latencies are measured on: ``NVIDIA H100 80GB HBM3``, ``CPU (x86_64)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine() or 'unknown'})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: RFDETRKeypoint,
    x: torch.Tensor,
    source_size: torch.Tensor,
    choice: ArchChoice,
    *,
    runs: int,
    warmup: int,
    threshold: float,
) -> tuple[float, float]:
    """Median and 90th-percentile milliseconds of ``forward_raw`` + ``postprocess`` on one image.

    x: (1, 3, R, R) normalised on the model's device; source_size: (1, 2) (H, W) of the source image.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    arch = choice.arch_kwargs()
    times = []
    for i in range(warmup + runs):
        _sync(model.device)
        start = time.perf_counter()
        model.postprocess(model.forward_raw(x, **arch), source_size, threshold)
        _sync(model.device)
        if i >= warmup:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), float(np.percentile(times, 90))


@dataclass(frozen=True)
class _ValSet:
    coco: dict[str, Any]
    schema: DatasetSchema
    source: str
    images: list[dict[str, Any]]  # sorted by id
    paths: list[str]


def _load_val_set(coco_json: str | Path | Mapping[str, Any], images_dir: str | Path) -> _ValSet:
    coco, schema, source = load_labelled_coco(coco_json, "the configurations cannot be scored on it")
    check_image_files(coco, images_dir, source)
    check_image_sizes(coco, images_dir, source)
    images = sorted(coco["images"], key=lambda im: im["id"])
    if not images:
        raise ValueError(f"{source}: no images to evaluate on")
    paths = [str(Path(images_dir) / im["file_name"]) for im in images]
    return _ValSet(coco, schema, source, images, paths)


def _preprocess(model: RFDETRKeypoint, val: _ValSet, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (x (b, 3, R, R) on the model's device, source sizes (b, 2) (H, W))."""
    batches = []
    for i in range(0, len(val.paths), PREDICT_BATCH):
        with naming_dataset_images(val.images[i : i + PREDICT_BATCH]):
            batches.append(model.preprocess(val.paths[i : i + PREDICT_BATCH], resolution))
    return batches


def _evaluate(
    model: RFDETRKeypoint,
    val: _ValSet,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    choice: ArchChoice,
    threshold: float,
    sigmas: Mapping[int | str, SigmaOverride] | None,
) -> tuple[dict[str, float], dict[str, float], float, int]:
    """(overall stats, AP per category name, 2-sigma coverage, number of detections) of one choice."""
    categories = class_categories(model.config.class_names, val.schema, model.config.num_keypoints_per_class)
    arch = choice.arch_kwargs()
    rows: list[dict[str, Any]] = []
    start = 0
    for x, sizes in batches:
        detections = model.postprocess(model.forward_raw(x, **arch), sizes, threshold)
        for image, dets in zip(val.images[start : start + len(detections)], detections):
            rows.extend(detections_to_results(dets, image["id"], categories))
        start += len(detections)
    report = evaluate_keypoints(val.coco, rows, sigmas=sigmas, source=val.source, schema=val.schema)
    coverage = report.calibration.coverage("all", [2])[2] if report.calibration is not None else math.nan
    per_category = {c.name: c.stats["AP"] for c in report.per_category}
    return report.overall, per_category, coverage, report.num_detections


def search(
    model: RFDETRKeypoint,
    coco_json: str | Path | Mapping[str, Any],
    images_dir: str | Path,
    choices: Sequence[ArchChoice],
    *,
    device: str | torch.device | None = None,
    latency_runs: int = 30,
    warmup: int = 5,
    threshold: float = 0.001,
    sigmas: Mapping[int | str, SigmaOverride] | None = None,
    progress: bool = True,
) -> list[SearchResult]:
    """Evaluate every choice on a COCO keypoint validation set and time it at batch 1.

    Args:
        model: a weight-sharing model; with ``device`` its network is moved there.
        coco_json: the validation annotations (a path or an already loaded dict); images_dir: their folder.
        choices: the sub-architectures to score (each must fit the model, see ``ArchChoice.check_model``).
        latency_runs / warmup: timed and untimed runs on the first validation image.
        threshold: score threshold of the detections given to the evaluation (low, as for COCO AP).
        sigmas: per-category OKS sigma overrides (see ``trainer.evaluation.sigmas``).

    Returns:
        One ``SearchResult`` per choice, in the order of ``choices``.

    Raises:
        FileNotFoundError, CocoFormatError or ValueError for bad data or choices (before any model run).
    """
    from tqdm.auto import tqdm

    from rfkp.api import RFDETRKeypoint

    if device is not None and torch.device(device) != model.device:
        model = RFDETRKeypoint(model.network, device)
    for choice in choices:
        choice.check_model(model.config)
    val = _load_val_set(coco_json, images_dir)
    # fail early on a model/dataset mismatch
    class_categories(model.config.class_names, val.schema, model.config.num_keypoints_per_class)
    name = device_name(model.device)
    by_resolution: dict[int, list[int]] = {}
    for i, choice in enumerate(choices):
        by_resolution.setdefault(choice.resolution, []).append(i)
    results: list[SearchResult | None] = [None] * len(choices)
    with tqdm(total=len(choices), desc="search", unit="config", disable=not progress) as bar:
        for resolution, indexes in by_resolution.items():
            batches = _preprocess(model, val, resolution)
            one_image, one_size = batches[0][0][:1], batches[0][1][:1]
            for i in indexes:
                choice = choices[i]
                bar.set_postfix_str(choice.key())
                overall, per_category, coverage, count = _evaluate(
                    model, val, batches, choice, threshold, sigmas
                )
                median, p90 = measure_latency(
                    model, one_image, one_size, choice, runs=latency_runs, warmup=warmup, threshold=threshold
                )
                results[i] = SearchResult(
                    choice, overall["AP"], overall["AP50"], overall["AR"], coverage, median, p90,
                    per_category, count, name,
                )  # fmt: skip
                bar.update(1)
            del batches
    return [r for r in results if r is not None]
