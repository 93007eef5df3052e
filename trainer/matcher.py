"""Hungarian matching of queries to targets, one assignment per query group.

Cost of query ``q`` for target ``n`` (docs/training.md, "Matching and losses"), all in float32 without gradients:

    5 * L1(box) + 2 * focal_class + 2 * (-GIoU) + 1 * kp_l1 + 1 * kp_findable + 1 * kp_visible + 1 * kp_nll

with ``focal_class = alpha (1 - p)^2 (-log p) - (1 - alpha) p^2 (-log(1 - p))`` at the target's class
(``p = sigmoid(logit)``, alpha 0.25) and the keypoint terms of ``trainer.keypoint_terms``. In training the
``Q`` queries form ``G`` groups of ``Q / G`` consecutive queries (group DETR); each group is matched to all
targets of the image independently, so every target gets ``G`` queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from trainer.box_ops import cxcywh_to_xyxy, pairwise_giou
from trainer.keypoint_terms import active_mask, class_blocks, keypoint_terms
from trainer.limits import COORD_LIMIT, LOGIT_LIMIT

#: Stand-in for non-finite costs: larger than any finite cost the terms above can reach in practice.
NON_FINITE_COST = 1e12

Indices = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching cost terms."""

    cls: float = 2.0
    bbox: float = 5.0
    giou: float = 2.0
    kp_l1: float = 1.0
    kp_findable: float = 1.0
    kp_visible: float = 1.0
    kp_nll: float = 1.0


def focal_class_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal cost of calling each logit positive, elementwise (float32)."""
    logits = logits.float()
    prob = logits.sigmoid()
    positive = alpha * (1 - prob) ** gamma * -F.logsigmoid(logits)
    negative = (1 - alpha) * prob**gamma * -F.logsigmoid(-logits)
    return positive - negative


class HungarianMatcher:
    """Optimal one-to-one assignment per image and per query group.

    Args:
        num_keypoints_per_class: keypoint count of each keypointed class (class index order).
        costs: the cost weights.
        focal_alpha: alpha of the focal class cost.
    """

    def __init__(
        self,
        num_keypoints_per_class: Sequence[int],
        costs: MatchCosts = MatchCosts(),
        focal_alpha: float = 0.25,
    ) -> None:
        if not num_keypoints_per_class or max(num_keypoints_per_class) <= 0:
            raise ValueError(
                f"num_keypoints_per_class needs a class with keypoints, got {num_keypoints_per_class}"
            )
        self.num_keypoints_per_class = list(num_keypoints_per_class)
        self.costs = costs
        self.focal_alpha = focal_alpha

    def cost_matrix(self, outputs: Mapping[str, Any], b: int, target: Mapping[str, Any]) -> torch.Tensor:
        """(Q, N) float32 cost of image ``b``'s queries against its ``N`` targets."""
        labels = target["labels"].long()
        logits = outputs["pred_logits"][b].detach().float().clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
        boxes = outputs["pred_boxes"][b].detach().float().clamp(-COORD_LIMIT, COORD_LIMIT)
        tgt_boxes = target["boxes"].to(boxes)
        cost = self.costs.cls * focal_class_cost(logits[:, labels], self.focal_alpha)
        cost = cost + self.costs.bbox * torch.cdist(boxes, tgt_boxes, p=1)
        cost = cost - self.costs.giou * pairwise_giou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(tgt_boxes))
        if "pred_keypoints" in outputs:
            blocks = class_blocks(outputs["pred_keypoints"][b].detach(), self.num_keypoints_per_class)
            active = active_mask(self.num_keypoints_per_class, blocks.device)[labels]
            area = tgt_boxes[:, 2] * tgt_boxes[:, 3]
            terms = keypoint_terms(blocks[:, labels], target["keypoints"].to(blocks.device), active, area)
            cost = cost + (
                self.costs.kp_l1 * terms["l1"]
                + self.costs.kp_findable * terms["findable"]
                + self.costs.kp_visible * terms["visible"]
                + self.costs.kp_nll * terms["nll"]
            )
        return torch.nan_to_num(cost, nan=NON_FINITE_COST, posinf=NON_FINITE_COST, neginf=-NON_FINITE_COST)

    @torch.no_grad()
    def __call__(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], num_groups: int = 1
    ) -> Indices:
        """Match one decoder layer's (or the proposals') outputs.

        Args:
            outputs: ``pred_logits (B, Q, C)``, ``pred_boxes (B, Q, 4)`` cxcywh normalised, optionally
                ``pred_keypoints (B, Q, Ck * Kmax, 8)``.
            targets: B dicts with ``labels (N,)``, ``boxes (N, 4)``, ``keypoints (N, Kmax, 3)``.
            num_groups: query groups ``G``; ``Q`` must be divisible by it.

        Returns:
            Per image ``(query_idx, target_idx)`` int64 tensors of equal length ``G * min(Q / G, N)``.
        """
        batch, num_queries = outputs["pred_logits"].shape[:2]
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} target dicts for a batch of {batch}")
        if num_groups < 1 or num_queries % num_groups:
            raise ValueError(f"{num_queries} queries cannot be split into {num_groups} groups")
        group_size = num_queries // num_groups
        indices: Indices = []
        for b, target in enumerate(targets):
            if len(target["labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(outputs, b, target).cpu().numpy()
            rows, cols = [], []
            for g in range(num_groups):
                r, c = linear_sum_assignment(cost[g * group_size : (g + 1) * group_size])
                rows.append(r + g * group_size)
                cols.append(c)
            indices.append(
                (torch.from_numpy(np.concatenate(rows)).long(), torch.from_numpy(np.concatenate(cols)).long())
            )
        return indices
