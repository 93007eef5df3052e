"""Exponential moving average of the model's weights (evaluated and saved as the inference weights)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """``ema = d * ema + (1 - d) * model`` after each optimiser step, with a warm-up of the decay:
    ``d = decay * (1 - exp(-updates / tau))`` so early, random weights are forgotten quickly.

    Floating-point tensors of the state dict are averaged (in float32 master copies); integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.993, tau: float = 100.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def current_decay(self) -> float:
        if self.tau <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for name, ema_t in self.module.state_dict().items():
            src = source[name].detach()
            if ema_t.dtype.is_floating_point:
                ema_t.mul_(d).add_(src.to(ema_t.dtype), alpha=1.0 - d)
            else:
                ema_t.copy_(src)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.tau = float(state["tau"])
