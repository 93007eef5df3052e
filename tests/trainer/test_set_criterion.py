"""Criterion losses against hand computations; layers, groups, padding and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.losses import LossWeights, SetCriterion

LOGITS = [[1.2, -0.7], [-2.0, 0.3]]  # (Q=2, C=2): one keypointed class plus one extra logit
PRED_BOX = [0.5, 0.5, 0.4, 0.4]
FAR_BOX = [0.1, 0.1, 0.05, 0.05]
TGT_BOX = [0.55, 0.53, 0.4, 0.3]
# per keypoint: x, y, findable_logit, visible_logit, log_l11, l21, log_l22, class_term
PRED_KP = [
    [0.52, 0.40, 1.5, 0.8, 0.3, -0.4, 1.1, 0.0],
    [0.58, 0.66, -0.2, -1.3, -0.5, 0.7, 0.2, 0.0],
    [0.10, 0.90, 0.4, 2.0, 0.9, 0.1, -0.3, 0.0],
]
TGT_KP = [[0.50, 0.45, 2], [0.60, 0.60, 1], [0.0, 0.0, 0]]


def _bce(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _hand_losses() -> dict[str, float]:
    """Every loss of the single-target case written out with floats and explicit matrices."""
    area = TGT_BOX[2] * TGT_BOX[3]
    l1 = sum(abs(p - t) for p, t in zip(PRED_BOX, TGT_BOX))

    def xyxy(b: list[float]) -> list[float]:
        return [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]

    a, b = xyxy(PRED_BOX), xyxy(TGT_BOX)
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = PRED_BOX[2] * PRED_BOX[3] + area - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union
    giou = iou - (enclosing - union) / enclosing

    p = 1 / (1 + math.exp(-LOGITS[0][0]))
    t = max(p**0.25 * iou**0.75, 0.01)
    ce = -t * math.log(p) - (1 - t) * math.log(1 - p)
    for q, c in ((0, 1), (1, 0), (1, 1)):
        pn = 1 / (1 + math.exp(-LOGITS[q][c]))
        ce += -(pn**2) * math.log(1 - pn)

    labelled = [k for k in range(3) if TGT_KP[k][2] > 0]
    kp_l1 = sum(abs(PRED_KP[k][0] - TGT_KP[k][0]) + abs(PRED_KP[k][1] - TGT_KP[k][1]) for k in labelled)
    kp_l1 /= len(labelled) * math.sqrt(area)
    findable = sum(_bce(PRED_KP[k][2], float(TGT_KP[k][2] > 0)) for k in range(3)) / 3
    visible = sum(_bce(PRED_KP[k][3], float(TGT_KP[k][2] == 2)) for k in range(3)) / 3
    nll = 0.0
    for k in labelled:
        chol = np.array([[math.exp(PRED_KP[k][4]), 0.0], [PRED_KP[k][5], math.exp(PRED_KP[k][6])]])
        precision = chol @ chol.T
        d = np.array([PRED_KP[k][0] - TGT_KP[k][0], PRED_KP[k][1] - TGT_KP[k][1]])
        nll += 0.5 * d @ precision @ d / area - math.log(np.linalg.det(chol))
    nll /= len(labelled)
    return {
        "loss_ce": ce, "loss_bbox": l1, "loss_giou": 1 - giou, "loss_kp_l1": kp_l1,
        "loss_kp_findable": findable, "loss_kp_visible": visible, "loss_kp_nll": nll,
    }  # fmt: skip


def _single_case(requires_grad: bool = False) -> tuple[dict, list[dict]]:
    far_kp = [[0.1, 0.1, 0, 0, 0, 0, 0, 0]] * 3
    outputs = {
        "pred_logits": torch.tensor([LOGITS], dtype=torch.float64),
        "pred_boxes": torch.tensor([[PRED_BOX, FAR_BOX]], dtype=torch.float64),
        "pred_keypoints": torch.tensor([[PRED_KP, far_kp]], dtype=torch.float64),
    }
    for v in outputs.values():
        v.requires_grad_(requires_grad)
    targets = [
        {"labels": torch.tensor([0]), "boxes": torch.tensor([TGT_BOX]), "keypoints": torch.tensor([TGT_KP])}
    ]
    return outputs, targets


def test_losses_equal_hand_computation() -> None:
    outputs, targets = _single_case()
    losses = SetCriterion([3])(outputs, targets)
    hand = _hand_losses()
    for name, value in hand.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name
    w = LossWeights()
    total = 2 * hand["loss_ce"] + 5 * hand["loss_bbox"] + 2 * hand["loss_giou"]
    total += hand["loss_kp_l1"] + hand["loss_kp_findable"] + hand["loss_kp_visible"] + hand["loss_kp_nll"]
    assert (w.ce, w.bbox, w.giou) == (2, 5, 2)
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_every_layer_and_the_proposals_are_supervised() -> None:
    outputs, targets = _single_case()
    layer = {k: v.clone() for k, v in outputs.items()}
    outputs["aux_outputs"] = [dict(layer), dict(layer)]
    # proposals without keypoints
    outputs["enc_outputs"] = {k: layer[k] for k in ("pred_logits", "pred_boxes")}
    losses = SetCriterion([3])(outputs, targets)
    hand = _hand_losses()
    for suffix in ("", "_0", "_1"):
        for name, value in hand.items():
            assert losses[name + suffix].item() == pytest.approx(value, rel=1e-5)
    assert {k for k in losses if k.endswith("_enc")} == {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"}
    single = 2 * hand["loss_ce"] + 5 * hand["loss_bbox"] + 2 * hand["loss_giou"]
    keypoints = sum(hand[f"loss_kp_{k}"] for k in ("l1", "findable", "visible", "nll"))
    assert losses["loss"].item() == pytest.approx(4 * single + 3 * keypoints, rel=1e-5)


def test_query_groups_duplicate_matches_and_normalise_by_groups() -> None:
    outputs, targets = _single_case()
    grouped = {k: torch.cat([v, v], dim=1) for k, v in outputs.items()}  # 2 groups of the same 2 queries
    plain = SetCriterion([3])(outputs, targets)
    losses = SetCriterion([3])(grouped, targets, num_groups=2)
    for name in ("loss_bbox", "loss_giou", "loss_kp_l1", "loss_kp_nll", "loss_ce"):
        # twice the matched pairs over twice num_boxes; the class loss also sees twice the negatives
        assert losses[name].item() == pytest.approx(plain[name].item(), rel=1e-5)


def test_padded_classes_ignore_other_blocks_and_inactive_slots() -> None:
    """Class 1 (2 keypoints) reads slots 0-1 of its own block; NaN anywhere else changes nothing."""
    g = torch.Generator().manual_seed(0)
    kps = torch.rand(1, 2, 6, 8, generator=g)
    targets = [
        {
            "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]]),
            "keypoints": torch.tensor([[[0.5, 0.4, 2.0], [0.6, 0.5, 1.0], [0.0, 0.0, 0.0]]]),
        }
    ]
    base = {"pred_logits": torch.randn(1, 2, 2, generator=g), "pred_boxes": torch.rand(1, 2, 4, generator=g)}
    clean = SetCriterion([3, 2])({**base, "pred_keypoints": kps}, targets)
    dirty_kps = kps.clone()
    dirty_kps[:, :, :3] = float("nan")  # class 0's block
    dirty_kps[:, :, 5] = float("nan")  # class 1's inactive third slot
    dirty_kps.requires_grad_(True)
    dirty = SetCriterion([3, 2])({**base, "pred_keypoints": dirty_kps}, targets)
    for name in clean:
        torch.testing.assert_close(dirty[name], clean[name])
    dirty["loss"].backward()
    assert torch.isfinite(dirty_kps.grad).all()
    assert (dirty_kps.grad[:, :, :3] == 0).all() and (dirty_kps.grad[:, :, 5] == 0).all()
    assert dirty_kps.grad[:, :, 3:5, :7].abs().sum() > 0


def test_gradients_reach_every_prediction_channel() -> None:
    outputs, targets = _single_case(requires_grad=True)
    SetCriterion([3])(outputs, targets)["loss"].backward()
    assert (outputs["pred_logits"].grad != 0).all()
    assert (outputs["pred_boxes"].grad[0, 0] != 0).all()
    grad = outputs["pred_keypoints"].grad[0, 0]
    assert (grad[:2, :7] != 0).all()  # labelled keypoints: every channel but the class term
    assert (grad[2, 2:4] != 0).all() and (grad[2, [0, 1, 4, 5, 6]] == 0).all()  # unlabelled: only the logits
    assert (outputs["pred_keypoints"].grad[0, 1] == 0).all()  # the unmatched query


def test_empty_targets_give_only_the_negative_class_loss() -> None:
    outputs, _ = _single_case()
    empty = [
        {
            "labels": torch.zeros(0, dtype=torch.long),
            "boxes": torch.zeros(0, 4),
            "keypoints": torch.zeros(0, 3, 3),
        }
    ]
    losses = SetCriterion([3])(outputs, empty)
    p = torch.sigmoid(torch.tensor(LOGITS))
    assert losses["loss_ce"].item() == pytest.approx((-(p**2) * torch.log(1 - p)).sum().item(), rel=1e-5)
    assert losses["loss_bbox"].item() == 0 and losses["loss_kp_nll"].item() == 0


def test_bad_targets_are_refused() -> None:
    outputs, targets = _single_case()
    targets[0]["labels"] = torch.tensor([1])
    with pytest.raises(ValueError, match=r"target 0: labels \[1\] outside \[0, 1\)"):
        SetCriterion([3])(outputs, targets)
    outputs, targets = _single_case()
    targets[0]["keypoints"] = targets[0]["keypoints"][:, :2]
    with pytest.raises(ValueError, match=r"must be \(N, 4\) / \(N, 3, 3\)"):
        SetCriterion([3])(outputs, targets)
