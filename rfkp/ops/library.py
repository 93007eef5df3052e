"""The ops registered with torch.library: rfkp::ms_deform_attn, rfkp::ms_deform_attn_fused,
rfkp::gaussian_rescore and their backward ops.

torch.compile and torch.export see each as one op (custom_op + register_fake). Autograd is registered with
register_autograd; the backward is itself an op, so compiled graphs keep it fused too. Each op body picks its
implementation with `rfkp.ops.backend.ops_backend(device)`: the CUDA library, Triton or the PyTorch reference.
The reference backward is the vector-Jacobian product of the reference (torch.func.vjp).
Registering the ops is all that importing this module does (no kernel build, no CUDA initialisation).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from rfkp.ops import checks
from rfkp.ops.backend import ops_backend
from rfkp.ops.ms_deform_attn import ms_deform_attn_reference
from rfkp.ops.ms_deform_attn_fused import ms_deform_attn_fused_reference
from rfkp.ops.rescore import gaussian_rescore_reference


def _kernels(device: torch.device) -> object | None:
    """The kernel module of the backend chosen for `device`, or None for the reference."""
    backend = ops_backend(device)
    if backend == "cuda":
        from rfkp.ops import cuda_ops

        return cuda_ops
    if backend == "triton":
        from rfkp.ops import triton_ms_deform_attn

        return triton_ms_deform_attn
    return None


def _reference_vjp(fn: Callable[..., Tensor], grad: Tensor, *primals: Tensor) -> tuple[Tensor, ...]:
    """Gradients in contiguous memory, as the CUDA and Triton backwards return them (and the fakes declare)."""
    _, vjp = torch.func.vjp(fn, *primals)
    return tuple(g.contiguous() for g in vjp(grad))


def _contiguous_like(x: Tensor) -> Tensor:
    """An uninitialised tensor of ``x``'s shape, dtype and device in contiguous memory: the backward ops'
    outputs (``empty_like`` would copy a permuted input's strides, which no backend returns)."""
    return x.new_empty(x.shape)


# ---- plain op: reference signature ------------------------------------------------------------------------

@torch.library.custom_op("rfkp::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    """Multi-scale deformable attention (reference signature) -> (B, Q, H * D)."""
    dims = checks.check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights)
    kernels = _kernels(value.device)
    if kernels is None:
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    checks.check_level_layout(spatial_shapes, level_start_index, dims.num_value)
    return kernels.ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights)


@ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    d = checks.check_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights)
    return value.new_empty(d.batch, d.queries, d.heads * d.channels)


@torch.library.custom_op("rfkp::ms_deform_attn_backward", mutates_args=())
def ms_deform_attn_backward_op(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor,
                               level_start_index: Tensor, sampling_locations: Tensor,
                               attention_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients for (value, sampling_locations, attention_weights)."""
    kernels = _kernels(value.device)
    if kernels is None:
        fn = partial(_msda_diff, spatial_shapes=spatial_shapes, level_start_index=level_start_index)
        return _reference_vjp(fn, grad_output, value, sampling_locations, attention_weights)
    return kernels.ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index,
                                           sampling_locations, attention_weights)


def _msda_diff(value, sampling_locations, attention_weights, *, spatial_shapes, level_start_index):
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights)


@ms_deform_attn_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return _contiguous_like(value), _contiguous_like(sampling_locations), _contiguous_like(attention_weights)


def _msda_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _msda_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
    gv, gl, gw = ms_deform_attn_backward_op(grad_output.contiguous(), value, spatial_shapes, level_start_index,
                                            locations, weights)
    return gv, None, None, gl, gw


ms_deform_attn_op.register_autograd(_msda_backward, setup_context=_msda_setup)


# ---- fused op: references, raw offsets, raw logits ----------------------------------------------------------

@torch.library.custom_op("rfkp::ms_deform_attn_fused", mutates_args=())
def ms_deform_attn_fused_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, reference: Tensor,
                            sampling_offsets: Tensor, attention_logits: Tensor) -> Tensor:
    """Fused deformable attention (see rfkp.ops.ms_deform_attn_fused) -> (B, Q, H * D)."""
    dims = checks.check_ms_deform_attn_fused(value, spatial_shapes, level_start_index, reference,
                                             sampling_offsets, attention_logits)
    kernels = _kernels(value.device)
    if kernels is None:
        return ms_deform_attn_fused_reference(value, spatial_shapes, level_start_index, reference,
                                              sampling_offsets, attention_logits)
    checks.check_level_layout(spatial_shapes, level_start_index, dims.num_value)
    return kernels.ms_deform_attn_fused_forward(value, spatial_shapes, level_start_index, reference,
                                                sampling_offsets, attention_logits)


@ms_deform_attn_fused_op.register_fake
def _(value, spatial_shapes, level_start_index, reference, sampling_offsets, attention_logits):
    d = checks.check_ms_deform_attn_fused(value, spatial_shapes, level_start_index, reference, sampling_offsets,
                                          attention_logits)
    return value.new_empty(d.batch, d.queries, d.heads * d.channels)


@torch.library.custom_op("rfkp::ms_deform_attn_fused_backward", mutates_args=())
def ms_deform_attn_fused_backward_op(grad_output: Tensor, value: Tensor, spatial_shapes: Tensor,
                                     level_start_index: Tensor, reference: Tensor, sampling_offsets: Tensor,
                                     attention_logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for (value, reference, sampling_offsets, attention_logits)."""
    kernels = _kernels(value.device)
    if kernels is None:
        fn = partial(_fused_diff, spatial_shapes=spatial_shapes, level_start_index=level_start_index)
        return _reference_vjp(fn, grad_output, value, reference, sampling_offsets, attention_logits)
    return kernels.ms_deform_attn_fused_backward(grad_output, value, spatial_shapes, level_start_index, reference,
                                                 sampling_offsets, attention_logits)


def _fused_diff(value, reference, sampling_offsets, attention_logits, *, spatial_shapes, level_start_index):
    return ms_deform_attn_fused_reference(value, spatial_shapes, level_start_index, reference, sampling_offsets,
                                          attention_logits)


@ms_deform_attn_fused_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, reference, sampling_offsets, attention_logits):
    return (_contiguous_like(value), _contiguous_like(reference), _contiguous_like(sampling_offsets),
            _contiguous_like(attention_logits))


def _fused_backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, reference, offsets, logits = ctx.saved_tensors
    gv, gr, go, gl = ms_deform_attn_fused_backward_op(grad_output.contiguous(), value, spatial_shapes,
                                                      level_start_index, reference, offsets, logits)
    return gv, None, None, gr, go, gl


ms_deform_attn_fused_op.register_autograd(_fused_backward, setup_context=_msda_setup)


# ---- Gaussian rescoring -------------------------------------------------------------------------------------

@torch.library.custom_op("rfkp::gaussian_rescore", mutates_args=())
def gaussian_rescore_op(cholesky: Tensor, findable_logit: Tensor, active: Tensor, score: Tensor, box_wh: Tensor,
                        image_wh: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor]:
    """Rescored score (N,), log mean trace (N,), pixel covariances (N, K, 2, 2) (see rfkp.ops.rescore)."""
    checks.check_rescore(cholesky, findable_logit, active, score, box_wh, image_wh)
    backend = ops_backend(cholesky.device)
    if backend == "cuda":
        from rfkp.ops import cuda_ops as kernels
    elif backend == "triton":
        from rfkp.ops import triton_rescore as kernels
    else:
        return gaussian_rescore_reference(cholesky, findable_logit, active, score, box_wh, image_wh, alpha)
    return kernels.gaussian_rescore(cholesky, findable_logit, active, score, box_wh, image_wh, alpha)


@gaussian_rescore_op.register_fake
def _(cholesky, findable_logit, active, score, box_wh, image_wh, alpha):
    N, K = checks.check_rescore(cholesky, findable_logit, active, score, box_wh, image_wh)
    return torch.empty_like(score), torch.empty_like(score), cholesky.new_empty(N, K, 2, 2)


def _rescore_setup(ctx, inputs, output):
    cholesky, findable_logit, active, score, box_wh, image_wh, alpha = inputs
    ctx.save_for_backward(cholesky, findable_logit, active, score, box_wh, image_wh)
    ctx.alpha = alpha


def _rescore_backward(ctx, grad_score, grad_log_mean_trace, grad_cov):
    # Rescoring is inference math; its backward is the reference's vector-Jacobian product on every device.
    cholesky, findable_logit, active, score, box_wh, image_wh = ctx.saved_tensors

    def fn(chol, logit, s, box, image):
        return gaussian_rescore_reference(chol, logit, active, s, box, image, ctx.alpha)

    primals = (cholesky, findable_logit, score, box_wh, image_wh)
    outputs, vjp = torch.func.vjp(fn, *primals)
    grads = (grad_score, grad_log_mean_trace, grad_cov)
    cotangents = tuple(torch.zeros_like(o) if g is None else g for g, o in zip(grads, outputs))
    g_chol, g_logit, g_score, g_box, g_image = vjp(cotangents)
    return g_chol, g_logit, None, g_score, g_box, g_image, None


gaussian_rescore_op.register_autograd(_rescore_backward, setup_context=_rescore_setup)


# ---- autocast ------------------------------------------------------------------------------------------------
# Under autocast the kernels run in float32, like the reference's grid_sample: mixed precision hands these ops
# half-precision values next to float32 locations, and the ops require one dtype.
for _op in (ms_deform_attn_op, ms_deform_attn_fused_op, gaussian_rescore_op):
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast(_op, _device_type, torch.float32)
