"""enqueue of both plugins on device buffers (torch) against the PyTorch references (skipped without CUDA).

The plugin runs on the stub build (compiled for this GPU) through the shim: onShapeChange then enqueue on the
current torch stream, with the workspace the plugin asks for. The reference runs in float64 on the very inputs
the plugin sees. Tolerances (max abs error <= tol * max(1, max |reference|), same relative tolerance):
float32 1e-5, float16 5e-3 (float accumulation, one rounding of the output to float16).
"""

from __future__ import annotations

import ctypes

import pytest
import torch
from trt_plugin_driver import Plugin, float32_field

from rfkp import ops
from rfkp.ops.sample_inputs import msda_inputs, rescore_inputs
from rfkp.tensorrt_plugins import BOOL, FLOAT, HALF, INT32, INT64, UINT8

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = {torch.float32: 1e-5, torch.float16: 5e-3}
TRT_TYPE = {torch.float32: FLOAT, torch.float16: HALF, torch.int64: INT64, torch.int32: INT32,
            torch.uint8: UINT8, torch.bool: BOOL}
FUSED = ("value", "spatial_shapes", "level_start_index", "reference", "sampling_offsets", "attention_logits")
RESCORE = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")


def _enqueue(plugin: Plugin, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
    tensors = [t.contiguous() for t in inputs] + outputs
    io = [(TRT_TYPE[t.dtype], list(t.shape)) for t in tensors]
    size = plugin.workspace_size(io, len(inputs))
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    status = plugin.enqueue(io, len(inputs), [t.data_ptr() for t in tensors], workspace.data_ptr() if size else 0,
                            stream)
    assert status == 0, plugin.last_error()
    torch.cuda.synchronize()


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    tol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("reference_dim, reference_levels", [(2, 1), (4, 1), (4, 3), (2, 3)])
def test_ms_deform_attn_plugin_matches_the_fused_reference(shim: ctypes.CDLL, dtype: torch.dtype,
                                                           reference_dim: int, reference_levels: int) -> None:
    with Plugin.create(shim, "RfkpMSDeformAttn") as plugin:
        for batch in (1, 3):  # one plugin object serves every batch size (dynamic batch)
            x = msda_inputs(batch, 7, 3, 5, [(5, 7), (3, 3), (1, 2)], 2, dtype=dtype, device="cuda",
                            seed=batch, reference_dim=reference_dim, reference_levels=reference_levels)
            out = torch.full((batch, 7, 15), float("nan"), dtype=dtype, device="cuda")
            _enqueue(plugin, [x[n] for n in FUSED], [out])
            want = ops.ms_deform_attn_fused_reference(*(x[n].double() if x[n].is_floating_point() else x[n]
                                                        for n in FUSED))
            _close(out, want, dtype, f"output, batch {batch}")


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.bool, torch.int32])
def test_gaussian_rescore_plugin_matches_the_reference(shim: ctypes.CDLL, dtype: torch.dtype,
                                                       mask_dtype: torch.dtype) -> None:
    x = rescore_inputs(37, 17, dtype=dtype, device="cuda")
    x["active"][0] = False
    x["cholesky"] = x["cholesky"] * 0.3  # pixel covariances stay below the float16 range
    x["image_wh"] = x["image_wh"] / 20
    x["score"][1], x["score"][2] = 1.0, 0.0
    active = x["active"]
    x["active"] = active.to(mask_dtype)
    if mask_dtype == torch.int32:
        x["active"] = x["active"] * 3  # nonzero is active
    alpha = 0.25  # exact in float32, the field's type
    outputs = [torch.full((37,), float("nan"), dtype=dtype, device="cuda"),
               torch.full((37,), float("nan"), dtype=dtype, device="cuda"),
               torch.zeros((37, 17, 2, 2), dtype=dtype, device="cuda")]
    with Plugin.create(shim, "RfkpGaussianRescore", [float32_field("alpha", alpha)]) as plugin:
        _enqueue(plugin, [x[n] for n in RESCORE], outputs)
    want = ops.gaussian_rescore_reference(*(x[n].double() if x[n].is_floating_point() else active
                                            for n in RESCORE), alpha=alpha)
    for what, got, ref in zip(("score", "log_mean_trace", "covariance"), outputs, want):
        assert torch.equal(torch.isnan(got), torch.isnan(ref)), what
        _close(got.nan_to_num(), ref.nan_to_num(), dtype, what)
