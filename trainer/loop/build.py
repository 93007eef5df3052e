"""The model for a dataset: a base architecture (a variant or a checkpoint's) with the dataset's classes and
keypoints, initialised from scratch or from a checkpoint of any skeleton."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from rfkp.config import COCO_PIXEL_OFFSET, ModelConfig
from rfkp.nn.detector import KeypointDETR
from rfkp.nn.init import init_weights
from trainer.data.schema import DatasetSchema
from trainer.loop.init_from import InitReport, LoadedCheckpoint, load_matching


def model_config_for(schema: DatasetSchema, base: ModelConfig, **overrides: object) -> ModelConfig:
    """``base`` with one class logit per dataset category and the dataset's category ids, keypoint names and
    skeletons.

    Calibration factors of ``base`` (``covariance_scale``) are dropped: they describe the covariances of the
    network they were fitted on, not of the one about to be trained (``rfkp calibrate`` it afterwards). The
    keypoint convention becomes rfkp's (``coco_keypoint_offset`` 0.5), the targets' convention."""
    params = dataclasses.asdict(base)
    params.update(
        num_classes=len(schema.categories),
        num_keypoints_per_class=schema.num_keypoints_per_class,
        class_names=schema.class_names,
        category_ids=schema.category_ids,
        keypoint_names=[list(c.keypoint_names) for c in schema.categories],
        skeletons=[[list(e) for e in c.skeleton] for c in schema.categories],
        covariance_scale=[],
        coco_keypoint_offset=COCO_PIXEL_OFFSET,  # the targets' convention, whatever base's was
    )
    params.update(overrides)
    return ModelConfig.from_dict(params)


def build_network(
    config: ModelConfig, init: str | Path | LoadedCheckpoint | None = None, seed: int = 0
) -> tuple[KeypointDETR, InitReport | None]:
    """A fresh, seeded network; with ``init`` (a checkpoint path, or one already read), every matching tensor
    of that checkpoint copied in."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = KeypointDETR(config)
        init_weights(network)
    report = load_matching(network, init, config) if init is not None else None
    return network, report
