"""Public ops. Each has a PyTorch reference with the same signature (the oracle and the CPU fallback).

The dispatching functions below call the reference on CPU tensors, after the registered ops' input checks
(shapes, dtypes, devices; bit-identical results, traced as plain torch ops by ONNX export), and, on CUDA
tensors, the registered torch.library op (one op for torch.compile and export), whose body uses the CUDA
library, Triton or the reference as chosen once by `ops_backend` (override: `set_ops_backend(...)` or
RFKP_OPS_BACKEND=reference|triton|cuda; a requested backend that cannot run raises, on CPU tensors too).
Importing this package registers the rfkp:: ops with torch.library and does nothing else.
"""

from __future__ import annotations

import torch

from rfkp.ops import checks, library
from rfkp.ops.backend import ops_backend, set_ops_backend, uses_reference_directly
from rfkp.ops.ms_deform_attn import ms_deform_attn_reference
from rfkp.ops.ms_deform_attn_fused import ms_deform_attn_fused_reference, sampling_locations_from_reference
from rfkp.ops.rescore import RESCORE_ALPHA, gaussian_rescore_reference


def _float32_under_autocast(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The reference path's inputs: under autocast for `device`, half-precision and float32 inputs in float32
    (float64 stays), as autocast hands them to the registered ops, so mixed dtypes are refused only outside it."""
    if not torch.is_autocast_enabled(device.type):
        return tensors
    return tuple(t.float() if t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors)


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention with the reference signature (see `ms_deform_attn_reference`) -> (B, Q, H * D)."""
    if uses_reference_directly(value.device):
        value, sampling_locations, attention_weights = _float32_under_autocast(
            value.device, value, sampling_locations, attention_weights)
        checks.check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    return library.ms_deform_attn_op(value, spatial_shapes, level_start_index, sampling_locations,
                                     attention_weights)


def multi_scale_deformable_attention_fused(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_logits: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention from references, raw offsets and raw logits (see `ms_deform_attn_fused_reference`)."""
    if uses_reference_directly(value.device):
        value, reference, sampling_offsets, attention_logits = _float32_under_autocast(
            value.device, value, reference, sampling_offsets, attention_logits)
        checks.check_ms_deform_attn_fused(value, spatial_shapes, level_start_index, reference, sampling_offsets,
                                          attention_logits)
        return ms_deform_attn_fused_reference(value, spatial_shapes, level_start_index, reference,
                                              sampling_offsets, attention_logits)
    return library.ms_deform_attn_fused_op(value, spatial_shapes, level_start_index, reference,
                                           sampling_offsets, attention_logits)


def gaussian_rescore(
    cholesky: torch.Tensor,
    findable_logit: torch.Tensor,
    active: torch.Tensor,
    score: torch.Tensor,
    box_wh: torch.Tensor,
    image_wh: torch.Tensor,
    alpha: float = RESCORE_ALPHA,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescored scores, log mean traces and pixel covariances (see `gaussian_rescore_reference`)."""
    if uses_reference_directly(cholesky.device):
        cholesky, findable_logit, score, box_wh, image_wh = _float32_under_autocast(
            cholesky.device, cholesky, findable_logit, score, box_wh, image_wh)
        checks.check_rescore(cholesky, findable_logit, active, score, box_wh, image_wh)
        return gaussian_rescore_reference(cholesky, findable_logit, active, score, box_wh, image_wh, alpha)
    return library.gaussian_rescore_op(cholesky, findable_logit, active, score, box_wh, image_wh, alpha)


__all__ = [
    "RESCORE_ALPHA",
    "gaussian_rescore",
    "gaussian_rescore_reference",
    "ms_deform_attn_fused_reference",
    "ms_deform_attn_reference",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_fused",
    "ops_backend",
    "sampling_locations_from_reference",
    "set_ops_backend",
]
