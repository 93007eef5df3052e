"""Random, reproducible inputs for the ops (tests and benchmarks).

Values are drawn in float64 on the CPU from a seeded generator, then cast to the requested dtype and device,
so every dtype and device sees the same numbers up to rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch


def level_layout(level_shapes: Sequence[tuple[int, int]],
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, int]:
    """spatial_shapes (L, 2) int64, level_start_index (L,) int64 and S for levels given as (h, w)."""
    shapes = torch.tensor([list(s) for s in level_shapes], dtype=torch.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cumsum(sizes, 0) - sizes
    return shapes.to(device), starts.to(device), int(sizes.sum())


def msda_inputs(batch: int, queries: int, heads: int, channels: int, level_shapes: Sequence[tuple[int, int]],
                points: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                seed: int = 0, reference_dim: int | None = None, reference_levels: int = 1,
                outside: float = 0.2) -> dict[str, torch.Tensor]:
    """Inputs of the plain op, or of the fused op when `reference_dim` is 2 (points) or 4 (boxes).

    Plain: value, spatial_shapes, level_start_index, sampling_locations (uniform in [-outside, 1 + outside],
    so some samples fall partly or fully outside the maps), attention_weights (softmax-normalised).
    Fused: value, spatial_shapes, level_start_index, reference (B, Q, reference_levels, reference_dim),
    sampling_offsets, attention_logits.
    """
    g = torch.Generator().manual_seed(seed)
    shapes, starts, S = level_layout(level_shapes)
    L = len(level_shapes)

    def rand(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=g, dtype=torch.float64)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=g, dtype=torch.float64)

    out = {"value": randn(batch, S, heads, channels), "spatial_shapes": shapes, "level_start_index": starts}
    if reference_dim is None:
        out["sampling_locations"] = rand(batch, queries, heads, L, points, 2) * (1 + 2 * outside) - outside
        logits = randn(batch, queries, heads, L * points)
        out["attention_weights"] = logits.softmax(-1).view(batch, queries, heads, L, points)
    elif reference_dim in (2, 4):
        ref = rand(batch, queries, reference_levels, reference_dim)
        if reference_dim == 4:
            ref[..., 2:] = ref[..., 2:] * 0.5 + 0.05  # box sizes in [0.05, 0.55]
        out["reference"] = ref
        out["sampling_offsets"] = randn(batch, queries, heads, L, points, 2) * 2
        out["attention_logits"] = randn(batch, queries, heads, L, points)
    else:
        raise ValueError(f"reference_dim must be None, 2 or 4, got {reference_dim}")
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in out.items()}


def rescore_inputs(num: int, keypoints: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of gaussian_rescore: about a third of the keypoint slots inactive, scores in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "cholesky": torch.randn(num, keypoints, 3, generator=g, dtype=torch.float64),
        "findable_logit": torch.randn(num, keypoints, generator=g, dtype=torch.float64) * 2,
        "active": torch.rand(num, keypoints, generator=g) > 0.33,
        "score": torch.rand(num, generator=g, dtype=torch.float64) * 0.98 + 0.01,
        "box_wh": torch.rand(num, 2, generator=g, dtype=torch.float64) * 0.5 + 0.05,
        "image_wh": torch.tensor([[640.0, 480.0]], dtype=torch.float64).expand(num, 2).clone(),
    }
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in out.items()}


def rescore_special_inputs(*, dtype: torch.dtype = torch.float32,
                           device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Inputs of gaussian_rescore with non-finite values: one detection per combination of log_l11, l21,
    log_l22 and findable logit in {0, 3, NaN, +inf, -inf} and a score in {0.5, 0, 1, NaN}, each with a second,
    finite keypoint slot. The kernels must give what the reference gives (NaN stays NaN, an infinite variance
    scores 0)."""
    special = [0.0, 3.0, math.nan, math.inf, -math.inf]
    rows = list(itertools.product(special, special, special, special, [0.5, 0.0, 1.0, math.nan]))
    grid = torch.tensor(rows, dtype=torch.float64)
    num = len(rows)
    finite_slot = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64).expand(num, 3)
    out = {
        "cholesky": torch.stack([grid[:, :3], finite_slot], dim=1),
        "findable_logit": torch.stack([grid[:, 3], torch.ones(num, dtype=torch.float64)], dim=1),
        "active": torch.ones(num, 2, dtype=torch.bool),
        "score": grid[:, 4].clone(),
        "box_wh": torch.tensor([[0.1, 0.2]], dtype=torch.float64).expand(num, 2).clone(),
        "image_wh": torch.tensor([[640.0, 480.0]], dtype=torch.float64).expand(num, 2).clone(),
    }
    return {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in out.items()}
