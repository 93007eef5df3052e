"""Clamp limits that keep the matching costs and losses finite in float32 whatever the predictions hold.

Predictions are cast to float32 first (they may be fp16/bf16 under autocast), then clamped. The limits lie
far outside anything a working model produces (fp16 values never reach ``LOGIT_LIMIT``; normalised
coordinates live near [0, 1]), so they only bite on runaway predictions; without them a single bf16 value near
1e38 would turn a summed loss into inf.

The losses clamp with ``clamp_keep_grad``: the value is clamped, the gradient passes through unchanged, as if
the prediction sat on the limit. A plain clamp would give a runaway prediction zero gradient, so nothing would
ever pull it back (a ``log_l11`` stuck above ``LOG_L_LIMIT`` would keep its huge NLL for good). The matcher,
which needs no gradient, clamps plainly.
"""

from __future__ import annotations

import torch

#: Class, findable and visible logits.
LOGIT_LIMIT = 1e6
#: Normalised box and keypoint coordinates.
COORD_LIMIT = 1e3
#: ``log_l11`` and ``log_l22`` of the precision Cholesky factor; ``|l21| <= exp(LOG_L_LIMIT)``.
LOG_L_LIMIT = 15.0
#: Smallest normalised target box area used as a divisor.
MIN_AREA = 1e-8


class _ClampKeepGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def clamp_keep_grad(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` whose gradient is the identity (also beyond the limits and for infinite ``x``)."""
    return _ClampKeepGrad.apply(x, low, high)
