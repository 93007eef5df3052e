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
        kp_dim: int | None = None,
        inter_instance_kp_attn: bool = False,
        keypoint_cross_attn: bool = True,
    ) -> None:
        super().__init__()
        kd = kp_dim or dim
        narrow = kd != dim  # a narrower keypoint stream: instance features, positions and memory projected in/out
        self.self_attn = nn.MultiheadAttention(dim, sa_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = DeformableAttention(dim, ca_heads, levels, points)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = Linear(dim, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, dim)
        self.norm3 = nn.LayerNorm(dim)
        # keypoint stream (heads scale with its width, at least one)
        shrink = dim // kd
        self.narrow, self.inter_instance = narrow, inter_instance_kp_attn
        if narrow:
            self.inst_in_proj = Linear(dim, kd)
            self.inst_pos_in_proj = Linear(dim, kd)
            self.inst_out_proj = Linear(kd, dim)
            self.memory_in_proj = Linear(dim, kd)
        self.kp_inst_self_attn = nn.MultiheadAttention(kd, max(1, sa_heads // shrink), batch_first=True)
        self.instance_kp_layer_scale = nn.Parameter(torch.full((1,), 1e-6))
        self.kp_inst_norm = nn.LayerNorm(dim)
        self.kp_norm = nn.LayerNorm(kd)
        if inter_instance_kp_attn:  # each keypoint attends to the same keypoint of the other instances
            self.inter_inst_kp_attn = nn.MultiheadAttention(kd, max(1, ca_heads // shrink), batch_first=True)
            self.inter_inst_kp_norm = nn.LayerNorm(kd)
        self.keypoint_cross_attn = keypoint_cross_attn
        if keypoint_cross_attn:
            self.kp_cross_attn = DeformableAttention(kd, max(1, ca_heads // shrink), levels, points)
            self.kp_cross_attn_norm = nn.LayerNorm(kd)
        self.kp_linear1 = Linear(kd, 4 * kd)
        self.kp_linear3 = Linear(4 * kd, kd)
        self.kp_norm5 = nn.LayerNorm(kd)

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

        narrow = self.narrow
        inst = self.inst_in_proj(tgt) if narrow else tgt
        inst_pos = self.inst_pos_in_proj(query_pos) if narrow else query_pos
        K, D = kp.shape[2], kp.shape[3]
        tokens = torch.cat([inst.unsqueeze(2), kp], dim=2).reshape(B * Q, 1 + K, D)
        pos = torch.cat([kp_pos.new_zeros(1, D), kp_pos], dim=0)
        qk = tokens + pos
        out = self.kp_inst_self_attn(qk, qk, tokens, attn_mask=kp_attn_mask, need_weights=False)[0]
        out = out.reshape(B, Q, 1 + K, D)
        back = self.inst_out_proj(out[:, :, 0]) if narrow else out[:, :, 0]
        tgt = self.kp_inst_norm(tgt + back * self.instance_kp_layer_scale)
        kp = self.kp_norm(kp + out[:, :, 1:])

        if self.inter_instance:
            kp = self.inter_inst_kp_norm(kp + self._across_instances(kp, inst_pos, groups))

        if self.keypoint_cross_attn:
            kq = (kp + inst_pos.unsqueeze(2)).reshape(B, Q * K, D)
            kref = ref_boxes.unsqueeze(2).expand(B, Q, K, 4).reshape(B, Q * K, 4)
            value = self.memory_in_proj(kp_memory) if narrow else kp_memory
            ca = self.kp_cross_attn(kq, kref, value, spatial_shapes, level_start_index)
            kp = self.kp_cross_attn_norm(kp + ca.reshape(B, Q, K, D))
        kp = self.kp_norm5(kp + self.kp_linear3(self.kp_linear1(kp, "relu")))
        return tgt, kp

    def _across_instances(self, kp: torch.Tensor, inst_pos: torch.Tensor, groups: int) -> torch.Tensor:
        """Attention of each keypoint over the same keypoint of the other queries of its group (query groups
        stay apart, as in the instance self-attention); position: the instance's query position."""
        B, Q, K, D = kp.shape
        x = kp.transpose(1, 2)  # (B, K, Q, D)
        p = inst_pos.unsqueeze(1).expand(B, K, Q, D)
        if groups > 1:  # groups along the batch axis
            x = torch.cat(x.split(Q // groups, dim=2), dim=0)
            p = torch.cat(p.split(Q // groups, dim=2), dim=0)
        n, _, q, _ = x.shape
        x, p = x.reshape(n * K, q, D), p.reshape(n * K, q, D)
        out = self.inter_inst_kp_attn(x + p, x + p, x, need_weights=False)[0].reshape(n, K, q, D)
        if groups > 1:
            out = torch.cat(out.split(B, dim=0), dim=2)
        return out.transpose(1, 2)


class Decoder(nn.Module):
    """Runs the first `num_layers` layers against fixed reference boxes; returns every layer's outputs."""

    def __init__(
        self,
        *,
        num_layers: int,
        dim: int,
        num_keypoints_per_class: list[int],
        kp_dim: int | None = None,
        **layer_kwargs: int,
    ) -> None:
        super().__init__()
        kd = kp_dim or dim
        self.layers = nn.ModuleList(DecoderLayer(dim=dim, kp_dim=kd, **layer_kwargs) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.keypoint_pos_embed = nn.Parameter(torch.randn(sum(num_keypoints_per_class), kd))
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
