"""One real training step: dataset -> augmentation -> batch -> rfkp network (training mode) -> criterion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rfkp.nn.detector import KeypointDETR
from rfkp.nn.init import init_weights
from rfkp.variants import tiny
from trainer.data.coco import CocoKeypointDataset
from trainer.data.collate import BatchCollator
from trainer.data.transforms import TrainAugment
from trainer.losses import SetCriterion

ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mirror-mouse"


def test_losses_of_every_output_backpropagate_into_the_network() -> None:
    if not ROOT.is_dir():
        pytest.skip(f"shared test data not found at {ROOT}")
    dataset = CocoKeypointDataset(ROOT / "val.json", ROOT / "images", flip_pairs={"*": [(0, 3), (1, 2)]})
    dataset.transform = TrainAugment(dataset.schema, seed=0)
    schema = dataset.schema
    cfg = tiny(
        num_classes=len(schema.categories) + 1,
        num_keypoints_per_class=schema.num_keypoints_per_class,
        class_names=schema.class_names,
        keypoint_names=[list(c.keypoint_names) for c in schema.categories],
        skeletons=[list(c.skeleton) for c in schema.categories],
    )
    torch.manual_seed(0)
    network = KeypointDETR(cfg)
    init_weights(network)
    network.train()
    collate = BatchCollator([64, 96], cfg.image_mean, cfg.image_std, block_size=cfg.block_size, seed=0)
    batch = collate([dataset[0], dataset[1]])
    outputs = network(batch.images)
    assert outputs["pred_keypoints"].shape[-2:] == (2 * 7, 8)
    losses = SetCriterion(cfg.num_keypoints_per_class)(outputs, batch.targets, num_groups=cfg.group_detr)
    suffixes = {"", "_enc", *(f"_{i}" for i in range(cfg.dec_layers - 1))}
    assert {name for name in losses if name.startswith("loss_kp_nll")} == {
        f"loss_kp_nll{s}" for s in suffixes
    }
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    grads = {name: p.grad for name, p in network.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    for head in ("class_embed.weight", "bbox_embed.layers.2.weight", "keypoint_embed.layers.2.weight"):
        assert grads[head].abs().sum() > 0, head
    assert any(name.startswith("backbone.") and g.abs().sum() > 0 for name, g in grads.items())
