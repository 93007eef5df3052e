"""Triton kernels in Triton's CPU interpreter (TRITON_INTERPRET=1) against the reference, on tiny shapes.

About 50-200 ms per launch in the interpreter, so shapes stay tiny and gradchecks use fast mode. On a machine
with CUDA these run as real kernels in test_ops_gpu.py instead.
"""

from __future__ import annotations

import os

import pytest
import torch

import rfkp.ops as ops
from rfkp.ops import backend, library
from rfkp.ops.sample_inputs import msda_inputs, rescore_inputs, rescore_special_inputs

if torch.cuda.is_available():
    pytest.skip("a CUDA device is present: the Triton kernels are tested for real in test_ops_gpu.py",
                allow_module_level=True)

# TRITON_INTERPRET must be set when triton itself is imported (its standard library is decorated then), so it
# is set here, at collection, and restored right after the imports; the fixtures set it again while testing.
_previous = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    from rfkp.ops import triton_ms_deform_attn, triton_rescore
finally:
    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous
if not all(isinstance(k, InterpretedFunction)
           for k in (triton.language.sum, triton_ms_deform_attn._msda_kernel, triton_rescore._rescore_kernel)):
    pytest.skip("triton was imported without TRITON_INTERPRET=1 earlier in this process", allow_module_level=True)

LEVELS = [(3, 4), (2, 2)]
PLAIN = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
FUSED = ("value", "spatial_shapes", "level_start_index", "reference", "sampling_offsets", "attention_logits")
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


@pytest.fixture(scope="module")
def interpreter():
    patch = pytest.MonkeyPatch()
    patch.setenv("TRITON_INTERPRET", "1")
    patch.delenv(backend.ENV_VAR, raising=False)
    try:
        yield triton_ms_deform_attn, triton_rescore
    finally:
        backend.set_ops_backend(None)
        patch.undo()


@pytest.fixture
def tri(interpreter):
    backend.set_ops_backend("triton")
    yield interpreter[0]
    backend.set_ops_backend(None)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol * scale)


def _grads(fn, args: tuple, names: tuple[str, ...], wrt: tuple[str, ...], grad_out: torch.Tensor):
    leaves = [a.detach().clone().requires_grad_(n in wrt) for a, n in zip(args, names)]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, [x for x, n in zip(leaves, names) if n in wrt], grad_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels,levels", [(4, LEVELS), (3, LEVELS[:1])])
def test_plain_forward_backward(tri, dtype, channels, levels):
    x = msda_inputs(1, 3, 2, channels, levels, 2, dtype=dtype)
    args = tuple(x[n] for n in PLAIN)
    wrt = ("value", "sampling_locations", "attention_weights")
    grad_out = torch.randn(1, 3, 2 * channels, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _grads(ops.ms_deform_attn_reference, args, PLAIN, wrt, grad_out)
    out, grads = _grads(library.ms_deform_attn_op, args, PLAIN, wrt, grad_out)
    _close(out, ref_out, dtype)
    for g, r in zip(grads, ref_grads):
        _close(g, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reference_dim,reference_levels", [(2, 2), (4, 1)])
def test_fused_forward_backward(tri, dtype, reference_dim, reference_levels):
    x = msda_inputs(1, 3, 2, 4, LEVELS, 2, dtype=dtype, reference_dim=reference_dim,
                    reference_levels=reference_levels)
    args = tuple(x[n] for n in FUSED)
    wrt = ("value", "reference", "sampling_offsets", "attention_logits")
    grad_out = torch.randn(1, 3, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ref_out, ref_grads = _grads(ops.ms_deform_attn_fused_reference, args, FUSED, wrt, grad_out)
    out, grads = _grads(ops.multi_scale_deformable_attention_fused, args, FUSED, wrt, grad_out)
    _close(out, ref_out, dtype)
    for g, r in zip(grads, ref_grads):
        _close(g, r, dtype)


def test_gradcheck_and_opcheck_through_triton(tri):
    x = msda_inputs(1, 2, 1, 2, [(2, 3)], 2, dtype=torch.float64)
    args = tuple(x[n].requires_grad_(x[n].is_floating_point()) for n in PLAIN)
    assert torch.autograd.gradcheck(library.ms_deform_attn_op, args, fast_mode=True)
    torch.library.opcheck(library.ms_deform_attn_op, args)
    f = msda_inputs(1, 2, 1, 2, [(2, 3)], 2, dtype=torch.float64, reference_dim=4)
    fused_args = tuple(f[n].requires_grad_(f[n].is_floating_point()) for n in FUSED)
    assert torch.autograd.gradcheck(library.ms_deform_attn_fused_op, fused_args, fast_mode=True)


def test_empty_and_non_contiguous(tri):
    x = msda_inputs(2, 3, 2, 4, LEVELS, 2, dtype=torch.float64)
    value = x["value"].transpose(1, 2).contiguous().transpose(1, 2)
    assert not value.is_contiguous()
    args = (value, x["spatial_shapes"], x["level_start_index"], x["sampling_locations"], x["attention_weights"])
    _close(library.ms_deform_attn_op(*args), ops.ms_deform_attn_reference(*args), torch.float64)
    empty = msda_inputs(0, 3, 2, 4, LEVELS, 2, dtype=torch.float64)
    assert library.ms_deform_attn_op(*(empty[n] for n in PLAIN)).shape == (0, 3, 8)


def test_kernel_path_checks_level_layout(tri):
    x = msda_inputs(1, 2, 2, 4, LEVELS, 2)
    x["level_start_index"] = torch.tensor([0, 11])
    with pytest.raises(ValueError, match=r"level_start_index must be \[0, 12\]"):
        library.ms_deform_attn_op(*(x[n] for n in PLAIN))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy under the interpreter, on masked lanes
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rescore(interpreter, dtype):
    x = rescore_inputs(5, 3, dtype=dtype)
    x["active"][0] = False
    x["cholesky"][~x["active"]] = float("inf")  # inactive slots must not leak into the sums
    x["active"][1] = True
    x["cholesky"][1] = torch.tensor([200.0, 0.0, 200.0], dtype=dtype)  # the fused score saturates: clamp
    x["score"][1], x["score"][2] = 1.0, 0.0
    names = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")
    got = interpreter[1].gaussian_rescore(*(x[n] for n in names), 0.2)
    want = ops.gaussian_rescore_reference(*(x[n] for n in names), 0.2)
    for g, w in zip(got, want):
        assert torch.equal(torch.isnan(g), torch.isnan(w))
        _close(g.nan_to_num(), w.nan_to_num(), dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rescore_non_finite_inputs_match_the_reference(interpreter, dtype):
    """NaN stays NaN and an infinite variance scores 0, as in the reference (a NaN used to score 1 - eps)."""
    x = rescore_special_inputs(dtype=dtype)
    names = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")
    got = interpreter[1].gaussian_rescore(*(x[n] for n in names), 0.2)
    want = ops.gaussian_rescore_reference(*(x[n] for n in names), 0.2)
    for what, g, w in zip(("score", "log mean trace"), got[:2], want[:2]):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7, equal_nan=True, msg=what)
    assert torch.isnan(want[0]).sum() > 100 and (want[0] == 0).sum() > 100  # both kinds are exercised


def test_backward_ops_declare_the_contiguous_gradients_they_return(tri):
    """The fake (meta) backward ops must give the strides the kernels return (contiguous), also for permuted
    inputs: torch.compile and export plan memory from the fakes."""
    x = msda_inputs(1, 2, 2, 3, LEVELS[:1], 2, dtype=torch.float64)
    value = x["value"].transpose(1, 2).contiguous().transpose(1, 2)
    locations = x["sampling_locations"].transpose(0, 1).contiguous().transpose(0, 1)
    grad_out = torch.randn(1, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    args = (grad_out, value, x["spatial_shapes"], x["level_start_index"], locations, x["attention_weights"])
    torch.library.opcheck(library.ms_deform_attn_backward_op, args, test_utils=("test_faketensor",))
    f = msda_inputs(1, 2, 2, 3, LEVELS[:1], 2, dtype=torch.float64, reference_dim=4)
    reference = f["reference"].transpose(0, 1).contiguous().transpose(0, 1)
    fused = (grad_out, value, f["spatial_shapes"], f["level_start_index"], reference, f["sampling_offsets"],
             f["attention_logits"])
    torch.library.opcheck(library.ms_deform_attn_fused_backward_op, fused, test_utils=("test_faketensor",))
