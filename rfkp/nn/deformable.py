"""Deformable cross-attention around reference boxes (one or more feature levels)."""

from __future__ import annotations

import torch
from torch import nn

from rfkp import ops
from rfkp.nn.linear import Linear


class DeformableAttention(nn.Module):
    """Each head samples `points` locations per level around the query's reference box and mixes them.

    Sampling location = box centre + offset / points * box size / 2 (normalised image coordinates).
    """

    def __init__(self, dim: int, heads: int, levels: int = 1, points: int = 2) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by {heads} heads")
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = Linear(dim, heads * levels * points * 2)
        self.attention_weights = Linear(dim, heads * levels * points)
        self.value_proj = Linear(dim, dim)
        self.output_proj = Linear(dim, dim)

    def sampling_inputs(
        self, query: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused op's inputs: value (B, S, H, D), raw offsets (B, Q, H, L, P, 2), raw logits (B, Q, H, L, P)."""
        B, Q, _ = query.shape
        H, L, P = self.heads, self.levels, self.points
        v = self.value_proj(value).view(B, value.shape[1], H, self.dim // H)
        offsets = self.sampling_offsets(query).view(B, Q, H, L, P, 2)
        logits = self.attention_weights(query).view(B, Q, H, L, P)
        return v, offsets, logits

    def forward(
        self,
        query: torch.Tensor,
        ref_boxes: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """query (B, Q, C), ref_boxes (B, Q, 4) cxcywh normalised, value (B, S, C) -> (B, Q, C)."""
        v, offsets, logits = self.sampling_inputs(query, value)
        # one fused op: box-relative sampling locations, softmax over (L, P) and the bilinear sampling
        # (CUDA or Triton kernels on GPU, the PyTorch reference on CPU)
        out = ops.multi_scale_deformable_attention_fused(
            v, spatial_shapes, level_start_index, ref_boxes[:, :, None], offsets, logits
        )
        return self.output_proj(out)
