"""Set criterion: match every supervised output, then the detection and keypoint losses.

Supervised outputs (the model's training dict): the final decoder layer (``pred_logits``, ``pred_boxes``,
``pred_keypoints``), every earlier layer in ``aux_outputs`` (suffix ``_0``, ``_1``, ...) and the two-stage
proposals in ``enc_outputs`` (suffix ``_enc``; keypoint losses only when it carries ``pred_keypoints``). Each
is matched on its own. Losses are summed over matched pairs and divided by ``num_boxes = G * (number of
targets in the batch)`` (at least 1), ``G`` the number of query groups.

- ``loss_ce``: IoU-aware BCE. With ``p = sigmoid(logit)``: at a matched (query, target class) the soft target
  is ``t = max(p^alpha * IoU^(1 - alpha), 0.01)`` (no gradient through ``t``) and the loss
  ``-t log p - (1 - t) log(1 - p)``; every other (query, class) entry costs ``-p^2 log(1 - p)``.
- ``loss_bbox``: L1 of cxcywh boxes (summed over the 4 coordinates); ``loss_giou``: ``1 - GIoU``.
- ``loss_kp_l1``, ``loss_kp_findable``, ``loss_kp_visible``, ``loss_kp_nll``: ``trainer.keypoint_terms``.

Everything is computed in float32 on clamped predictions (``trainer.limits``; the clamps keep the gradient),
so it stays finite under fp16/bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainer.box_ops import cxcywh_to_xyxy, elementwise_giou, elementwise_iou
from trainer.keypoint_terms import active_mask, class_blocks, keypoint_terms
from trainer.limits import COORD_LIMIT, LOGIT_LIMIT, clamp_keep_grad
from trainer.matcher import HungarianMatcher, Indices


@dataclass(frozen=True)
class LossWeights:
    """Weights of the total loss (docs/training.md, "Matching and losses")."""

    ce: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    kp_l1: float = 1.0
    kp_findable: float = 1.0
    kp_visible: float = 1.0
    kp_nll: float = 1.0


def iou_aware_bce(
    logits: torch.Tensor,
    positions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    iou: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Summed IoU-aware BCE over all entries of ``logits (B, Q, C)``.

    Args:
        positions: ``(batch_idx, query_idx, class_idx)`` of the matched entries, each (M,).
        iou: (M,) IoU of each matched predicted box with its target box.
    """
    logits = clamp_keep_grad(logits.float(), -LOGIT_LIMIT, LOGIT_LIMIT)
    prob = logits.sigmoid()
    pos_weight = torch.zeros_like(logits)
    neg_weight = prob**gamma
    t = (prob[positions].detach() ** alpha * iou.detach().float() ** (1 - alpha)).clamp(min=0.01)
    pos_weight = pos_weight.index_put(positions, t)
    neg_weight = neg_weight.index_put(positions, 1 - t)
    # -pos log p - neg log(1 - p), with log(1 - p) = log p - x written through logsigmoid for stability.
    return (neg_weight * logits - F.logsigmoid(logits) * (pos_weight + neg_weight)).sum()


class SetCriterion:
    """Matching plus losses for every supervised output of one training step.

    Args:
        num_keypoints_per_class: keypoint count of each keypointed class (class index order).
        matcher: defaults to ``HungarianMatcher(num_keypoints_per_class)``.
        weights: loss weights of the total.
        focal_alpha: the alpha of the IoU-aware soft target and of the matcher's focal cost.
    """

    def __init__(
        self,
        num_keypoints_per_class: Sequence[int],
        matcher: HungarianMatcher | None = None,
        weights: LossWeights = LossWeights(),
        focal_alpha: float = 0.25,
    ) -> None:
        self.num_keypoints_per_class = list(num_keypoints_per_class)
        self.matcher = matcher or HungarianMatcher(num_keypoints_per_class, focal_alpha=focal_alpha)
        self.weights = weights
        self.focal_alpha = focal_alpha

    def _check_targets(self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]]) -> None:
        num_logits = outputs["pred_logits"].shape[-1]
        num_kp_classes = len(self.num_keypoints_per_class)
        k_max = max(self.num_keypoints_per_class)
        for i, t in enumerate(targets):
            labels = t["labels"]
            if len(labels) and (labels.min() < 0 or labels.max() >= min(num_logits, num_kp_classes)):
                raise ValueError(
                    f"target {i}: labels {labels.tolist()} outside [0, {min(num_logits, num_kp_classes)}) "
                    f"({num_logits} class logits, {num_kp_classes} keypointed classes)"
                )
            if t["keypoints"].shape[1:] != (k_max, 3) or t["boxes"].shape[1:] != (4,):
                raise ValueError(
                    f"target {i}: boxes {tuple(t['boxes'].shape)} / keypoints {tuple(t['keypoints'].shape)} "
                    f"must be (N, 4) / (N, {k_max}, 3)"
                )

    def layer_losses(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        indices: Indices,
        num_boxes: float,
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one output given its matching."""
        logits = outputs["pred_logits"]
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        tgt = {
            key: torch.cat([t[key][j.to(t[key].device)] for t, (_, j) in zip(targets, indices)]).to(device)
            for key in ("labels", "boxes", "keypoints")
        }
        src_boxes = clamp_keep_grad(outputs["pred_boxes"][batch_idx, query_idx].float(), -COORD_LIMIT, COORD_LIMIT)
        tgt_boxes = tgt["boxes"].float()
        src_xyxy, tgt_xyxy = cxcywh_to_xyxy(src_boxes), cxcywh_to_xyxy(tgt_boxes)
        iou = elementwise_iou(src_xyxy.detach(), tgt_xyxy)
        positions = (batch_idx, query_idx, tgt["labels"].long())
        losses = {
            "loss_ce": iou_aware_bce(logits, positions, iou, self.focal_alpha) / num_boxes,
            "loss_bbox": (src_boxes - tgt_boxes).abs().sum() / num_boxes,
            "loss_giou": (1 - elementwise_giou(src_xyxy, tgt_xyxy)).sum() / num_boxes,
        }
        if "pred_keypoints" in outputs:
            blocks = class_blocks(outputs["pred_keypoints"], self.num_keypoints_per_class)
            labels = tgt["labels"].long()
            pred = blocks[batch_idx, query_idx, labels]
            active = active_mask(self.num_keypoints_per_class, device)[labels]
            terms = keypoint_terms(pred, tgt["keypoints"], active, tgt_boxes[:, 2] * tgt_boxes[:, 3])
            losses.update({f"loss_kp_{name}": value.sum() / num_boxes for name, value in terms.items()})
        return losses

    def __call__(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], num_groups: int = 1
    ) -> dict[str, torch.Tensor]:
        """All losses of one step.

        Args:
            outputs: the model's training output (see module docstring).
            targets: per image ``labels (N,)``, ``boxes (N, 4)`` cxcywh normalised, ``keypoints (N, Kmax, 3)``.
            num_groups: query groups ``G`` of the outputs (1 at evaluation).

        Returns:
            Unweighted float32 scalars ``loss_<term><suffix>`` per output, plus ``loss``, the weighted total.
        """
        self._check_targets(outputs, targets)
        layers: list[tuple[str, Mapping[str, Any]]] = [("", outputs)]
        layers += [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "enc_outputs" in outputs:
            layers.append(("_enc", outputs["enc_outputs"]))
        num_boxes = max(float(num_groups * sum(len(t["labels"]) for t in targets)), 1.0)
        weights = {f"loss_{k}": w for k, w in asdict(self.weights).items()}
        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), dtype=torch.float32, device=outputs["pred_logits"].device)
        for suffix, layer in layers:
            indices = self.matcher(layer, targets, num_groups)
            for name, value in self.layer_losses(layer, targets, indices, num_boxes).items():
                losses[name + suffix] = value
                total = total + weights[name] * value
        losses["loss"] = total
        return losses
