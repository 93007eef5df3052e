"""Matching and losses stay finite under fp16/bf16 autocast, extreme predictions included."""

from __future__ import annotations

import pytest
import torch

from trainer.losses import SetCriterion

FP16_MAX = 6.0e4
BF16_HUGE = 3.0e38


def _outputs(dtype: torch.dtype, big: float, everything_extreme: bool) -> dict[str, torch.Tensor]:
    """Class, findable and visible logits at +-big; with ``everything_extreme`` every channel is +-big."""
    g = torch.Generator().manual_seed(0)

    def sign(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=g).float() * 2 - 1

    boxes = torch.rand(2, 8, 4, generator=g) * 0.5 + 0.1
    boxes[0, :2] = big  # runaway boxes
    kps = torch.rand(2, 8, 6, 8, generator=g) * 2 - 1
    kps[..., :2] = torch.rand(2, 8, 6, 2, generator=g)
    kps[..., 2:4] = sign(2, 8, 6, 2) * big
    if everything_extreme:
        kps = sign(2, 8, 6, 8) * big
    return {
        "pred_logits": (sign(2, 8, 3) * big).to(dtype).requires_grad_(),
        "pred_boxes": boxes.to(dtype).requires_grad_(),
        "pred_keypoints": kps.to(dtype).requires_grad_(),
    }


def _targets(degenerate: bool) -> list[dict[str, torch.Tensor]]:
    kps = torch.tensor([[[0.3, 0.3, 2.0], [0.4, 0.6, 1.0], [0.0, 0.0, 0.0]]])
    one = {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.5, 0.2, 0.4]]), "keypoints": kps}
    size = 1e-6 if degenerate else 0.3
    two = {
        "labels": torch.tensor([0, 1]),
        "boxes": torch.tensor([[0.5, 0.5, size, size], [0.2, 0.2, 0.1, 0.1]]),
        "keypoints": torch.cat([kps, kps]),
    }
    return [one, two]


def _losses(
    outputs: dict[str, torch.Tensor], dtype: torch.dtype, degenerate: bool
) -> dict[str, torch.Tensor]:
    full = {**outputs, "aux_outputs": [dict(outputs)], "enc_outputs": dict(outputs)}
    with torch.autocast("cpu", dtype=dtype):
        return SetCriterion([3, 2])(full, _targets(degenerate), num_groups=2)


@pytest.mark.parametrize(("dtype", "big"), [(torch.float16, FP16_MAX), (torch.bfloat16, BF16_HUGE)])
def test_extreme_logits_give_finite_losses_and_gradients(dtype: torch.dtype, big: float) -> None:
    outputs = _outputs(dtype, big, everything_extreme=False)
    losses = _losses(outputs, dtype, degenerate=False)
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    losses["loss"].backward()
    for name, tensor in outputs.items():
        assert torch.isfinite(tensor.grad.float()).all(), name
    assert outputs["pred_boxes"].grad.abs().sum() > 0 and outputs["pred_keypoints"].grad.abs().sum() > 0
    # fp16 logits lie inside the clamp; bf16 logits of 3e38 are clamped, and the clamp keeps their gradient
    assert outputs["pred_logits"].grad.abs().sum() > 0


@pytest.mark.parametrize(("dtype", "big"), [(torch.float16, FP16_MAX), (torch.bfloat16, BF16_HUGE)])
def test_every_channel_extreme_still_gives_finite_losses_and_no_nan_gradient(
    dtype: torch.dtype, big: float
) -> None:
    """Runaway coordinates and Cholesky factors and a sub-pixel target box: the loss stays finite; gradients
    carry no NaN (an fp16 gradient beyond fp16's range is inf, which a GradScaler detects and skips)."""
    outputs = _outputs(dtype, big, everything_extreme=True)
    losses = _losses(outputs, dtype, degenerate=True)
    for name, value in losses.items():
        assert torch.isfinite(value), name
    losses["loss"].backward()
    for name, tensor in outputs.items():
        assert not torch.isnan(tensor.grad).any(), name
        if dtype == torch.bfloat16:
            assert torch.isfinite(tensor.grad.float()).all(), name


def test_runaway_predictions_get_a_gradient_that_pulls_them_back() -> None:
    """Beyond the clamp limits the value is clamped but the gradient still points back: a precision factor far
    above ``LOG_L_LIMIT`` with a keypoint error, coordinates far outside the image and saturated logits."""
    kps = torch.zeros(1, 1, 2, 8)
    kps[0, 0, :, :2] = torch.tensor([[0.35, 0.3], [5.0e3, 0.6]])  # the second keypoint's x is runaway
    kps[0, 0, :, 2:4] = -1.0e7  # findable and visible logits far below -LOGIT_LIMIT on labelled keypoints
    kps[0, 0, :, 4] = 40.0  # log_l11 far above LOG_L_LIMIT: a tiny ellipse around a wrong position
    kps.requires_grad_()
    outputs = {
        "pred_logits": torch.full((1, 1, 1), -1.0e7).requires_grad_(),
        "pred_boxes": torch.tensor([[[0.4, 0.5, 0.2, 0.4]]]).requires_grad_(),
        "pred_keypoints": kps,
    }
    target = {
        "labels": torch.tensor([0]),
        "boxes": torch.tensor([[0.4, 0.5, 0.2, 0.4]]),
        "keypoints": torch.tensor([[[0.3, 0.3, 2.0], [0.4, 0.6, 2.0]]]),
    }
    losses = SetCriterion([2])(outputs, [target], num_groups=1)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grad = kps.grad[0, 0]
    assert (grad[:, 4] > 0).all()  # descending lowers log_l11, widening the ellipse
    assert grad[1, 0] > 0  # descending moves x back towards the target
    assert (grad[:, 2:4] < 0).all()  # descending raises the findable and visible logits of visible keypoints
    assert outputs["pred_logits"].grad[0, 0, 0] < 0  # and the matched class logit
