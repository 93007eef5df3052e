"""Multi-scale deformable attention: the PyTorch reference.

This is the oracle the fused kernels are tested against, the CPU fallback, and the benchmark baseline.
Convention (Deformable-DETR): bilinear sampling, zero padding outside the map, align_corners=False, so a
sampling location of (0, 0) is the top-left corner of the top-left pixel and (1, 1) the bottom-right corner.

Memory traffic of the reference (fp32): it reads value once per level through grid_sample
(B*S*H*D*4 bytes, gathered 4 times per sample), writes the sampled tensor (B*Q*H*L*P*D*4 bytes), reads it
again for the weighted sum, and writes the output (B*Q*H*D*4 bytes). A fused kernel only reads value at the
sampled corners and writes the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention over L feature levels.

    Args:
        value: (B, S, H, D), S = sum over levels of h_l * w_l, levels flattened row-major.
        spatial_shapes: (L, 2) integer (h, w) of each level.
        level_start_index: (L,) integer offset of each level in S (unused by the math, kept for the signature).
        sampling_locations: (B, Q, H, L, P, 2) normalised (x, y) in [0, 1]; outside samples read zeros.
        attention_weights: (B, Q, H, L, P), already normalised over (L, P).

    Returns:
        (B, Q, H * D), in value's dtype.
    """
    del level_start_index
    B, S, H, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    if sum(sizes) != S:
        raise ValueError(f"spatial_shapes cover {sum(sizes)} positions but value has S={S}")
    value_levels = value.split(sizes, dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        # (B, h*w, H, D) -> (B*H, D, h, w)
        v = value_levels[lvl].permute(0, 2, 3, 1).reshape(B * H, D, int(h), int(w))
        # (B, Q, H, P, 2) -> (B*H, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * H, Q, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*H, D, Q, L*P) weighted by (B*H, 1, Q, L*P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    out = (stacked * weights).sum(-1).view(B, H * D, Q)
    return out.transpose(1, 2).contiguous()
