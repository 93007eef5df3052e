"""Small shared building blocks: MLP, sine embedding of boxes, box reparameterisation."""

from __future__ import annotations

import math

import torch
from torch import nn

from rfkp.nn.linear import Linear


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, "relu" if i < len(self.layers) - 1 else None)
        return x


def sine_embed_boxes(boxes: torch.Tensor, dim_per_coord: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """(..., 4) cxcywh in [0, 1] -> (..., 4 * dim_per_coord), ordered (y, x, w, h), sin/cos interleaved."""
    idx = torch.arange(dim_per_coord, dtype=boxes.dtype, device=boxes.device)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / dim_per_coord)
    parts = []
    for c in (1, 0, 2, 3):
        v = boxes[..., c, None] * (2 * math.pi) / freqs
        parts.append(torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), dim=-1).flatten(-2))
    return torch.cat(parts, dim=-1)


def apply_box_delta(delta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Box reparameterisation: cxcy = d_xy * ref_wh + ref_xy, wh = exp(d_wh) * ref_wh (all cxcywh)."""
    cxcy = delta[..., :2] * ref[..., 2:] + ref[..., :2]
    wh = delta[..., 2:].exp() * ref[..., 2:]
    return torch.cat([cxcy, wh], dim=-1)


def decode_keypoint_delta(delta: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Keypoint head output (..., K, 8) against reference boxes (..., 4): x, y become normalised image coordinates."""
    delta = torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
    xy = delta[..., :2] * ref[..., None, 2:] + ref[..., None, :2]
    return torch.cat([xy, delta[..., 2:]], dim=-1)
