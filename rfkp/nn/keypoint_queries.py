"""Per-instance keypoint queries: learned keypoint embeddings modulated AdaLN-Zero style by the instance feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfkp.nn.linear import Linear


class KeypointQueryInit(nn.Module):
    """out = proj(LN(q) * (1 + scale) + shift) * gate + q, with (scale, shift, gate) = MLP(instance feature).

    The MLP's last layer starts at zero, so at initialisation every instance gets the plain learned queries.
    """

    def __init__(self, dim: int, num_keypoints: int, out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.queries = nn.Parameter(torch.randn(num_keypoints, out_dim))
        self.adaLN_modulation = nn.Sequential(Linear(dim, dim), nn.GELU(), Linear(dim, 3 * out_dim))
        nn.init.zeros_(self.adaLN_modulation[2].weight)
        nn.init.zeros_(self.adaLN_modulation[2].bias)
        self.out_proj = Linear(out_dim, out_dim)

    def forward(self, instance: torch.Tensor) -> torch.Tensor:
        """instance (..., C) -> keypoint queries (..., K, C_kp)."""
        q = self.queries
        normed = F.layer_norm(q, (q.shape[-1],))
        scale, shift, gate = self.adaLN_modulation(instance.unsqueeze(-2)).chunk(3, dim=-1)
        return self.out_proj(normed * (1 + scale) + shift) * gate + q
