"""The four keypoint terms shared by the matcher (as costs) and the criterion (as losses).

Prediction layout (the model's training output): ``pred_keypoints (..., C * Kmax, 8)`` holds, for every
keypointed class ``c``, a block of ``Kmax`` slots at ``[c * Kmax, (c + 1) * Kmax)``; class ``c`` uses the first
``num_keypoints_per_class[c]`` slots of its block (the active mask). Channels:
``[x, y, findable_logit, visible_logit, log_l11, l21, log_l22, class_term]``, x/y normalised image coordinates.

Targets: ``(..., Kmax, 3)`` ``(x, y, v)`` normalised, ``v`` in {0, 1, 2}; ``area = w * h`` of the normalised
target box. Per instance (all four are means over that instance's keypoints):

- ``l1``: mean over labelled keypoints (v > 0) of ``|dx| + |dy|``, divided by ``sqrt(area)``;
- ``findable``: mean over the class's keypoints of BCE(findable_logit, v > 0);
- ``visible``: mean over the class's keypoints of BCE(visible_logit, v == 2);
- ``nll``: mean over labelled keypoints of ``0.5 d^T P d / area - log l11 - log l22`` (``rfkp.ops.gaussian``).

Numerical safety: everything is computed in float32 whatever the input dtype (fp16/bf16 under autocast);
inactive or unlabelled slots are replaced by zeros before any arithmetic (so garbage there, NaN included,
reaches neither values nor gradients); logits, x/y, ``log_l11``/``log_l22`` and ``l21`` are clamped, keeping
their gradient, and the area bounded from below (``trainer.limits``), which keeps every term far inside the
float32 range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rfkp.ops.gaussian import gaussian_nll
from trainer.limits import COORD_LIMIT, LOG_L_LIMIT, LOGIT_LIMIT, MIN_AREA, clamp_keep_grad

KEYPOINT_CHANNELS = 8


def active_mask(num_keypoints_per_class: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """(C, Kmax) bool: True for the keypoint slots class ``c`` uses."""
    k_max = max(num_keypoints_per_class)
    mask = torch.zeros(len(num_keypoints_per_class), k_max, dtype=torch.bool, device=device)
    for c, k in enumerate(num_keypoints_per_class):
        mask[c, :k] = True
    return mask


def class_blocks(pred_keypoints: torch.Tensor, num_keypoints_per_class: Sequence[int]) -> torch.Tensor:
    """``(..., C * Kmax, 8)`` -> ``(..., C, Kmax, 8)``, checking the layout."""
    num_classes, k_max = len(num_keypoints_per_class), max(num_keypoints_per_class)
    if pred_keypoints.shape[-1] != KEYPOINT_CHANNELS or pred_keypoints.shape[-2] != num_classes * k_max:
        raise ValueError(
            f"pred_keypoints must be (..., {num_classes} classes x {k_max} slots = {num_classes * k_max}, "
            f"{KEYPOINT_CHANNELS}) for num_keypoints_per_class={list(num_keypoints_per_class)}, "
            f"got {tuple(pred_keypoints.shape)}"
        )
    return pred_keypoints.unflatten(-2, (num_classes, k_max))


def keypoint_terms(
    pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor, area: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The four per-instance terms, broadcasting over leading dims.

    Args:
        pred: (..., Kmax, 8) the predicted block of the target's class.
        target: (..., Kmax, 3) target ``(x, y, v)``.
        active: (..., Kmax) bool, the slots the target's class uses.
        area: (...) normalised target box area.

    Returns:
        ``{"l1", "findable", "visible", "nll"}``, each (...) float32. An instance with no labelled keypoint
        gets ``l1 = nll = 0``.
    """
    pred = pred.float()
    target = target.float()
    shape = torch.broadcast_shapes(pred.shape[:-1], target.shape[:-1], active.shape)
    pred = pred.expand(*shape, pred.shape[-1])
    target = target.expand(*shape, 3)
    active = active.expand(shape)
    v = target[..., 2]
    labelled = active & (v > 0)
    zero = torch.zeros((), dtype=torch.float32, device=pred.device)

    area = area.float().clamp(min=MIN_AREA)
    n_labelled = labelled.sum(-1)
    n_active = active.sum(-1).clamp(min=1)

    xy = torch.where(labelled[..., None], clamp_keep_grad(pred[..., :2], -COORD_LIMIT, COORD_LIMIT), zero)
    target_xy = torch.where(labelled[..., None], target[..., :2], zero)
    d = xy - target_xy
    l1 = d.abs().sum(-1).sum(-1) / n_labelled.clamp(min=1) / area.sqrt()

    findable_logit = torch.where(active, clamp_keep_grad(pred[..., 2], -LOGIT_LIMIT, LOGIT_LIMIT), zero)
    visible_logit = torch.where(active, clamp_keep_grad(pred[..., 3], -LOGIT_LIMIT, LOGIT_LIMIT), zero)
    bce_f = F.binary_cross_entropy_with_logits(findable_logit, (v > 0).float(), reduction="none")
    bce_v = F.binary_cross_entropy_with_logits(visible_logit, (v == 2).float(), reduction="none")
    findable = torch.where(active, bce_f, zero).sum(-1) / n_active
    visible = torch.where(active, bce_v, zero).sum(-1) / n_active

    log_l11 = clamp_keep_grad(pred[..., 4], -LOG_L_LIMIT, LOG_L_LIMIT)
    l21_limit = math.exp(LOG_L_LIMIT)
    l21 = clamp_keep_grad(pred[..., 5], -l21_limit, l21_limit)
    log_l22 = clamp_keep_grad(pred[..., 6], -LOG_L_LIMIT, LOG_L_LIMIT)
    raw = torch.where(labelled[..., None], torch.stack([log_l11, l21, log_l22], dim=-1), zero)
    nll_k = gaussian_nll(d, raw, area[..., None])
    nll = torch.where(labelled, nll_k, zero).sum(-1) / n_labelled.clamp(min=1)
    return {"l1": l1, "findable": findable, "visible": visible, "nll": nll}
