"""Box conversions and (generalised) IoU against hand-computed values."""

from __future__ import annotations

import torch

from trainer.box_ops import cxcywh_to_xyxy, elementwise_giou, elementwise_iou, pairwise_giou, xyxy_to_cxcywh


def test_conversions_round_trip() -> None:
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6], [0.1, 0.9, 0.0, 0.3]])
    torch.testing.assert_close(cxcywh_to_xyxy(boxes)[0], torch.tensor([0.4, 0.1, 0.6, 0.7]))
    torch.testing.assert_close(xyxy_to_cxcywh(cxcywh_to_xyxy(boxes)), boxes)


def test_iou_and_giou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1, union 7, enclosing 9
    torch.testing.assert_close(elementwise_iou(a, b), torch.tensor([1 / 7]))
    torch.testing.assert_close(elementwise_giou(a, b), torch.tensor([1 / 7 - 2 / 9]))
    far = torch.tensor([[4.0, 0.0, 5.0, 1.0]])  # disjoint: iou 0, enclosing 10, union 5
    torch.testing.assert_close(elementwise_giou(a, far), torch.tensor([-0.5]))
    torch.testing.assert_close(elementwise_giou(a, a), torch.tensor([1.0]))


def test_pairwise_matches_elementwise_and_zero_size_is_finite() -> None:
    a = torch.rand(3, 2) * 0.5
    a = torch.cat([a, a + torch.rand(3, 2) * 0.5], dim=1)
    b = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.1, 0.1, 0.6, 0.9]])  # the first has zero size
    pair = pairwise_giou(a, b)
    assert pair.shape == (3, 2) and torch.isfinite(pair).all()
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(pair[i, j], elementwise_giou(a[i], b[j]))
