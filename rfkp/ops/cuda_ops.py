"""Torch-facing wrappers of the CUDA library: allocate, pass data_ptr()s, dims and the current stream.

Inputs are checked by rfkp.ops.checks before they get here; these wrappers make them contiguous, move the
level tensors to the device as int64, run on value's device and current stream, and cast the float/double
accumulation buffers of scattered gradients back to the input dtype.
"""

from __future__ import annotations

import ctypes

import torch

from rfkp.ops import cuda_lib

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
_INT_MAX = 2**31 - 1


def _library(device: torch.device) -> ctypes.CDLL:
    major, minor = torch.cuda.get_device_capability(device)
    return cuda_lib.library_for(f"{major}{minor}")


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() > 0 else None


def _dims(value: torch.Tensor, coords: torch.Tensor) -> list[int]:
    B, S, H, D = value.shape
    _, Q, _, L, P, _ = coords.shape
    dims = [B, S, H, D, L, Q, P]
    if max(dims) > _INT_MAX or value.numel() > 2**62:
        raise ValueError(f"sizes {dims} exceed the kernels' int32 dims")
    return dims


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _levels(value: torch.Tensor, spatial_shapes: torch.Tensor,
            level_start_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous(),
            level_start_index.to(device=value.device, dtype=torch.int64).contiguous())


def _call(name: str, value: torch.Tensor, *args: object) -> None:
    lib = _library(value.device)
    stream = torch.cuda.current_stream(value.device).cuda_stream
    with torch.cuda.device(value.device):
        status = getattr(lib, name)(DTYPE_CODES[value.dtype], *args, stream)
    cuda_lib.check_status(lib, status)


def ms_deform_attn_forward(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                           sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Reference signature; returns (B, Q, H * D)."""
    dims = _dims(value, sampling_locations)
    value, loc, attn = value.contiguous(), sampling_locations.contiguous(), attention_weights.contiguous()
    shapes, starts = _levels(value, spatial_shapes, level_start_index)
    B, _, H, D, _, Q, _ = dims
    out = value.new_empty(B, Q, H * D)
    _call("rfkp_ms_deform_attn_forward", value, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc), _ptr(attn),
          _ptr(out), *dims)
    return out


def ms_deform_attn_backward(grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                            level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                            attention_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (value, sampling_locations, attention_weights)."""
    dims = _dims(value, sampling_locations)
    value, loc, attn = value.contiguous(), sampling_locations.contiguous(), attention_weights.contiguous()
    grad_output = grad_output.contiguous()
    shapes, starts = _levels(value, spatial_shapes, level_start_index)
    grad_value = torch.zeros(value.shape, dtype=_acc(value.dtype), device=value.device)
    grad_loc = torch.zeros_like(loc)
    grad_attn = torch.zeros_like(attn)
    _call("rfkp_ms_deform_attn_backward", value, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc), _ptr(attn),
          _ptr(grad_output), _ptr(grad_value), _ptr(grad_loc), _ptr(grad_attn), *dims)
    return grad_value.to(value.dtype), grad_loc, grad_attn


def ms_deform_attn_fused_forward(value: torch.Tensor, spatial_shapes: torch.Tensor,
                                 level_start_index: torch.Tensor, reference: torch.Tensor,
                                 sampling_offsets: torch.Tensor, attention_logits: torch.Tensor) -> torch.Tensor:
    """Fused signature; returns (B, Q, H * D)."""
    dims = _dims(value, sampling_offsets)
    value, ref = value.contiguous(), reference.contiguous()
    off, logits = sampling_offsets.contiguous(), attention_logits.contiguous()
    shapes, starts = _levels(value, spatial_shapes, level_start_index)
    B, _, H, D, _, Q, _ = dims
    out = value.new_empty(B, Q, H * D)
    _call("rfkp_ms_deform_attn_fused_forward", value, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(ref),
          ref.shape[2], ref.shape[3], _ptr(off), _ptr(logits), _ptr(out), *dims)
    return out


def ms_deform_attn_fused_backward(
    grad_output: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
    reference: torch.Tensor, sampling_offsets: torch.Tensor, attention_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for (value, reference, sampling_offsets, attention_logits)."""
    dims = _dims(value, sampling_offsets)
    value, ref = value.contiguous(), reference.contiguous()
    off, logits = sampling_offsets.contiguous(), attention_logits.contiguous()
    grad_output = grad_output.contiguous()
    shapes, starts = _levels(value, spatial_shapes, level_start_index)
    acc = _acc(value.dtype)
    grad_value = torch.zeros(value.shape, dtype=acc, device=value.device)
    grad_ref = torch.zeros(ref.shape, dtype=acc, device=value.device)
    grad_off = torch.zeros_like(off)
    grad_logits = torch.zeros_like(logits)
    _call("rfkp_ms_deform_attn_fused_backward", value, _ptr(value), _ptr(shapes), _ptr(starts), _ptr(ref),
          ref.shape[2], ref.shape[3], _ptr(off), _ptr(logits), _ptr(grad_output), _ptr(grad_value),
          _ptr(grad_off), _ptr(grad_logits), _ptr(grad_ref), *dims)
    return grad_value.to(value.dtype), grad_ref.to(value.dtype), grad_off, grad_logits


def gaussian_rescore(cholesky: torch.Tensor, findable_logit: torch.Tensor, active: torch.Tensor,
                     score: torch.Tensor, box_wh: torch.Tensor, image_wh: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as rfkp.ops.rescore.gaussian_rescore_reference (inputs already checked)."""
    N, K = cholesky.shape[:2]
    if N > _INT_MAX or K > _INT_MAX:
        raise ValueError(f"sizes ({N}, {K}) exceed the kernels' int32 dims")
    tensors = [t.contiguous() for t in (cholesky, findable_logit, active.to(torch.uint8), score, box_wh, image_wh)]
    out_score = torch.empty_like(score)
    out_lmt = torch.empty_like(score)
    out_cov = cholesky.new_empty(N, K, 2, 2)
    _call("rfkp_gaussian_rescore", cholesky, *map(_ptr, tensors), float(alpha), N, K, _ptr(out_score),
          _ptr(out_lmt), _ptr(out_cov))
    return out_score, out_lmt, out_cov
