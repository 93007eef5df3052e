"""Decoder: instance stream (self-attn, deformable cross-attn, FFN; post-norm) and, in the same layer,
the keypoint stream (instance + keypoint tokens attend to each other, keypoint deformable cross-attention
into the keypoint projector around the instance box, FFN)."""

from __future__ import annotations

import torch
from torch import nn

from rfkp.nn.deformable import DeformableAttention
from rfkp.nn.layers import MLP, sine_embed_boxes
from rfkp.nn.linear import Linear


def keypoint_class_mask(num_keypoints_per_class: list[int]) -> torch.Tensor:
    """(1+sumK, 1+sumK) bool, True where attention is blocked: keypoints of different classes."""
    total = sum(num_keypoints_per_class)
    owner = torch.cat([torch.full((k,), c) for c, k in enumerate(num_keypoints_per_class)] or [torch.zeros(0)])
    owner = torch.cat([torch.tensor([-1]), owner.long()])
    blocked = (owner[:, None] != owner[None, :]) & (owner[:, None] >= 0) & (owner[None, :] >= 0)
    assert blocked.shape == (1 + total, 1 + total)
    return blocked


class DecoderLayer(nn.Module):
    def __init__(
        self,
        *,
        dim: int = 256,
        sa_heads: int = 8,
        ca_heads: int = 16,
        levels: int = 1,
        points: int = 2,
        dim_feedforward: int = 2048,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, sa_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, ca_heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = Linear(dim, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, dim)
        self.norm3 = nn.LayerNorm(dim)
        # keypoint stream
        self.kp_inst_self_attn = nn.MultiheadAttention(dim, sa_heads, batch_first=True)
        self.instance_kp_layer_scale = nn.Parameter(torch.full((1,), 1e-6))
        self.kp_inst_norm = nn.LayerNorm(dim)
        self.kp_norm = nn.LayerNorm(dim)
        self.kp_cross_attn = DeformableAttention(dim, ca_heads, levels, points)
        self.kp_cross_attn_norm = nn.LayerNorm(dim)
        self.kp_linear1 = Linear(dim, 4 * dim)
        self.kp_linear3 = Linear(4 * dim, dim)
        self.kp_norm5 = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: torch.Tensor,
        kp: torch.Tensor,
        *,
        query_pos: torch.Tensor,
        kp_pos: torch.Tensor,
        ref_boxes: torch.Tensor,
        memory: torch.Tensor,
        kp_memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        kp_attn_mask: torch.Tensor,
        groups: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt (B, Q, C), kp (B, Q, K, C), kp_pos (K, C), ref_boxes (B, Q, 4); groups split Q for self-attention."""
        B, Q, C = tgt.shape
        q = tgt + query_pos
        if groups > 1:  # query groups never see each other: stack them along the batch axis
            qg = torch.cat(q.split(Q // groups, dim=1), dim=0)
            vg = torch.cat(tgt.split(Q // groups, dim=1), dim=0)
            sa = self.self_attn(qg, qg, vg, need_weights=False)[0]
            sa = torch.cat(sa.split(B, dim=0), dim=1)
        else:
            sa = self.self_attn(q, q, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + sa)
        tgt = self.norm2(tgt + self.cross_attn(tgt + query_pos, ref_boxes, memory, spatial_shapes, level_start_index))
        tgt = self.norm3(tgt + self.linear2(self.linear1(tgt, "relu")))

        K = kp.shape[2]
        tokens = torch.cat([tgt.unsqueeze(2), kp], dim=2).reshape(B * Q, 1 + K, C)
        pos = torch.cat([kp_pos.new_zeros(1, C), kp_pos], dim=0)
        qk = tokens + pos
        out = self.kp_inst_self_attn(qk, qk, tokens, attn_mask=kp_attn_mask, need_weights=False)[0]
        out = out.reshape(B, Q, 1 + K, C)
        tgt = self.kp_inst_norm(tgt + out[:, :, 0] * self.instance_kp_layer_scale)
        kp = self.kp_norm(kp + out[:, :, 1:])

        kq = (kp + query_pos.unsqueeze(2)).reshape(B, Q * K, C)
        kref = ref_boxes.unsqueeze(2).expand(B, Q, K, 4).reshape(B, Q * K, 4)
        ca = self.kp_cross_attn(kq, kref, kp_memory, spatial_shapes, level_start_index)
        kp = self.kp_cross_attn_norm(kp + ca.reshape(B, Q, K, C))
        kp = self.kp_norm5(kp + self.kp_linear3(self.kp_linear1(kp, "relu")))
        return tgt, kp


class Decoder(nn.Module):
    """Runs the first `num_layers` layers against fixed reference boxes; returns every layer's outputs."""

    def __init__(
        self,
        *,
        num_layers: int,
        dim: int,
        num_keypoints_per_class: list[int],
        **layer_kwargs: int,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim=dim, **layer_kwargs) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.keypoint_pos_embed = nn.Parameter(torch.randn(sum(num_keypoints_per_class), dim))
        self.register_buffer("kp_class_mask", keypoint_class_mask(num_keypoints_per_class), persistent=False)

    def forward(
        self,
        tgt: torch.Tensor,
        kp: torch.Tensor,
        ref_boxes: torch.Tensor,
        memory: torch.Tensor,
        kp_memory: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        num_layers: int | None = None,
        groups: int = 1,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns per-layer normalised instance features [(B, Q, C)] and raw keypoint features [(B, Q, K, C)]."""
        n = len(self.layers) if num_layers is None else num_layers
        if not 1 <= n <= len(self.layers):
            raise ValueError(f"num_layers must be in [1, {len(self.layers)}], got {n}")
        query_pos = self.ref_point_head(sine_embed_boxes(ref_boxes, tgt.shape[-1] // 2))
        mask = torch.zeros(self.kp_class_mask.shape, dtype=tgt.dtype, device=tgt.device)
        mask = mask.masked_fill(self.kp_class_mask, float("-inf"))
        hs, kps = [], []
        for layer in self.layers[:n]:
            tgt, kp = layer(
                tgt,
                kp,
                query_pos=query_pos,
                kp_pos=self.keypoint_pos_embed,
                ref_boxes=ref_boxes,
                memory=memory,
                kp_memory=kp_memory,
                spatial_shapes=spatial_shapes,
                level_start_index=level_start_index,
                kp_attn_mask=mask,
                groups=groups,
            )
            hs.append(self.norm(tgt))
            kps.append(kp)
        return hs, kps
