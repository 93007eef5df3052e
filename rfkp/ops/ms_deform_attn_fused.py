"""Fused multi-scale deformable attention: the PyTorch reference.

The fused variant takes what the attention module produces before the sampling step: reference points or
boxes, raw sampling offsets and raw attention logits. The kernels build the sampling locations and the softmax
inside; this reference does the same arithmetic with torch ops and calls `ms_deform_attn_reference`.

Location arithmetic (Deformable-DETR convention, same operation order as the kernels):
- points, reference (B, Q, Lr, 2) = (x, y): loc = ref + offset / (w_l, h_l)
- boxes, reference (B, Q, Lr, 4) = (cx, cy, w, h): loc = ref_xy + offset / P * ref_wh * 0.5
Lr is 1 (one reference shared by every level) or L. Attention weights are softmax(logits) over the L * P
samples of each (batch, query, head).
"""

from __future__ import annotations

import torch

from rfkp.ops.ms_deform_attn import ms_deform_attn_reference


def sampling_locations_from_reference(
    reference: torch.Tensor, sampling_offsets: torch.Tensor, spatial_shapes: torch.Tensor
) -> torch.Tensor:
    """Sampling locations (B, Q, H, L, P, 2), normalised (x, y), from references and raw offsets.

    Args:
        reference: (B, Q, Lr, 2) points (x, y) or (B, Q, Lr, 4) boxes (cx, cy, w, h), normalised, Lr in {1, L}.
        sampling_offsets: (B, Q, H, L, P, 2) raw offsets (pixels of each level for points, box units for boxes).
        spatial_shapes: (L, 2) integer (h, w) of each level.
    """
    points = sampling_offsets.shape[4]
    ref = reference[:, :, None, :, None, :]  # (B, Q, 1, Lr, 1, R)
    if reference.shape[-1] == 2:
        normalizer = spatial_shapes.flip(-1).to(device=sampling_offsets.device, dtype=sampling_offsets.dtype)
        return ref + sampling_offsets / normalizer[None, None, None, :, None, :]
    if reference.shape[-1] == 4:
        return ref[..., :2] + sampling_offsets / points * ref[..., 2:] * 0.5
    raise ValueError(f"reference must end in 2 (points) or 4 (boxes), got shape {tuple(reference.shape)}")


def ms_deform_attn_fused_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention from references, raw offsets and raw logits.

    Args:
        value: (B, S, H, D).
        spatial_shapes: (L, 2) integer (h, w).
        level_start_index: (L,) integer offsets of the levels in S.
        reference: (B, Q, Lr, 2) points or (B, Q, Lr, 4) boxes, normalised to [0, 1], Lr in {1, L}.
        sampling_offsets: (B, Q, H, L, P, 2) raw.
        attention_logits: (B, Q, H, L, P) raw; softmax is taken over (L, P).

    Returns:
        (B, Q, H * D) in value's dtype.
    """
    B, Q, H, L, P = attention_logits.shape
    locations = sampling_locations_from_reference(reference, sampling_offsets, spatial_shapes)
    weights = attention_logits.reshape(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, locations, weights)
