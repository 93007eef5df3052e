"""Box conversions and (generalised) IoU, pairwise and elementwise.

Boxes are ``(..., 4)``: ``cxcywh`` is ``(cx, cy, w, h)``, ``xyxy`` is ``(x1, y1, x2, y2)`` with ``x2 >= x1``,
``y2 >= y1``, in any consistent unit. Divisions are guarded by ``EPS`` so zero-size boxes give finite values.
"""

from __future__ import annotations

import torch

EPS = 1e-7


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes (..., 4) -> (...)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _iou_parts(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IoU, union and enclosing area of broadcastable xyxy boxes ``a`` and ``b``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / (union + EPS)
    enc_lt = torch.minimum(a[..., :2], b[..., :2])
    enc_rb = torch.maximum(a[..., 2:], b[..., 2:])
    enclosing = (enc_rb - enc_lt).clamp(min=0).prod(-1)
    return iou, union, enclosing


def elementwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows: xyxy (..., 4), (..., 4) -> (...), in [0, 1]."""
    return _iou_parts(a, b)[0]


def elementwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matching rows: xyxy (..., 4), (..., 4) -> (...), in [-1, 1]."""
    iou, union, enclosing = _iou_parts(a, b)
    return iou - (enclosing - union) / (enclosing + EPS)


def pairwise_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of every pair: xyxy (M, 4), (N, 4) -> (M, N)."""
    return elementwise_giou(a[:, None, :], b[None, :, :])
