"""CUDA library and Triton kernels on a GPU against the float64 reference (skipped without CUDA).

Tolerances (max abs error <= tol * max(1, max |reference|), and the same relative tolerance): the reference
runs in float64 on the very inputs the kernel sees (cast to the kernel dtype first), so only the kernel's own
arithmetic is measured: float64 1e-10, float32 2e-5, float16 5e-3, bfloat16 4e-2 (float accumulation,
one rounding of the output to the storage dtype).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import rfkp.ops as ops
from rfkp.ops import backend, cuda_lib, library
from rfkp.ops.sample_inputs import msda_inputs, rescore_inputs, rescore_special_inputs

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
DTYPES = list(TOL)
ODD_LEVELS = [(5, 7), (3, 3), (1, 2)]
PLAIN = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
FUSED = ("value", "spatial_shapes", "level_start_index", "reference", "sampling_offsets", "attention_logits")
RESCORE = ("cholesky", "findable_logit", "active", "score", "box_wh", "image_wh")


def _unavailable(name: str) -> str | None:
    if name == "cuda":
        return None if cuda_lib.find_nvcc() else "nvcc not found"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if torch.cuda.get_device_capability() < (8, 0):
        return "Triton kernels need compute capability 8.0+"
    return None


@pytest.fixture(params=["cuda", "triton"])
def kernel_backend(request, monkeypatch):
    why = _unavailable(request.param)
    if why:
        pytest.skip(why)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backend.set_ops_backend(request.param)
    assert ops.ops_backend("cuda") == request.param
    yield request.param
    backend.set_ops_backend(None)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    tol = TOL[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what}: {m}")


def _check(op, reference, x: dict, names: tuple[str, ...], dtype: torch.dtype) -> None:
    """Forward and every input gradient of `op` against `reference` in float64 on the same inputs."""
    wrt = [n for n in names if x[n].is_floating_point()]
    leaves = {n: x[n].detach().clone().requires_grad_(n in wrt) for n in names}
    out = op(*(leaves[n] for n in names))
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grads = torch.autograd.grad(out, [leaves[n] for n in wrt], grad_out.to(out.device, dtype))
    wide = {n: x[n].detach().double().requires_grad_(n in wrt) if n in wrt else x[n] for n in names}
    ref_out = reference(*(wide[n] for n in names))
    ref_grads = torch.autograd.grad(ref_out, [wide[n] for n in wrt], grad_out.to(out.device))
    assert out.dtype == dtype and out.is_contiguous()
    _close(out, ref_out, dtype, "output")
    for n, g, r in zip(wrt, grads, ref_grads):
        assert g.dtype == dtype
        _close(g, r, dtype, f"grad {n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [4, 30, 32, 71])
def test_plain_against_reference(kernel_backend, dtype, channels):
    x = msda_inputs(2, 7, 3, channels, ODD_LEVELS, 3, dtype=dtype, device="cuda", seed=channels)
    _check(ops.multi_scale_deformable_attention, ops.ms_deform_attn_reference, x, PLAIN, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reference_dim,reference_levels", [(2, 1), (2, 3), (4, 1), (4, 3)])
def test_fused_against_reference(kernel_backend, dtype, reference_dim, reference_levels):
    x = msda_inputs(2, 7, 3, 30, ODD_LEVELS, 3, dtype=dtype, device="cuda", reference_dim=reference_dim,
                    reference_levels=reference_levels)
    _check(ops.multi_scale_deformable_attention_fused, ops.ms_deform_attn_fused_reference, x, FUSED, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_model_shapes(kernel_backend, dtype):
    # Detection cross-attention: 100 queries x 16 heads x 16 dims, one 48x48 level, 2 points, box references.
    x = msda_inputs(2, 100, 16, 16, [(48, 48)], 2, dtype=dtype, device="cuda", reference_dim=4)
    _check(ops.multi_scale_deformable_attention_fused, ops.ms_deform_attn_fused_reference, x, FUSED, dtype)


def test_fp64_gradcheck(kernel_backend):
    x = msda_inputs(1, 3, 2, 5, ODD_LEVELS[:2], 2, dtype=torch.float64, device="cuda")
    args = tuple(x[n].requires_grad_(x[n].is_floating_point()) for n in PLAIN)
    assert torch.autograd.gradcheck(library.ms_deform_attn_op, args)
    for reference_dim in (2, 4):
        f = msda_inputs(1, 3, 2, 5, ODD_LEVELS[:2], 2, dtype=torch.float64, device="cuda",
                        reference_dim=reference_dim, reference_levels=2)
        fused = tuple(f[n].requires_grad_(f[n].is_floating_point()) for n in FUSED)
        assert torch.autograd.gradcheck(library.ms_deform_attn_fused_op, fused)
    torch.library.opcheck(library.ms_deform_attn_op, args)


def test_empty_and_non_contiguous(kernel_backend):
    for batch, queries in ((0, 5), (2, 0)):
        x = msda_inputs(batch, queries, 3, 8, ODD_LEVELS, 2, device="cuda")
        _check(ops.multi_scale_deformable_attention, ops.ms_deform_attn_reference, x, PLAIN, torch.float32)
    x = msda_inputs(2, 6, 3, 8, ODD_LEVELS, 2, device="cuda")
    x["value"] = x["value"].transpose(1, 2).contiguous().transpose(1, 2)
    x["sampling_locations"] = torch.cat([x["sampling_locations"]] * 2, dim=-1)[..., 1:3]
    assert not x["value"].is_contiguous() and not x["sampling_locations"].is_contiguous()
    _check(ops.multi_scale_deformable_attention, ops.ms_deform_attn_reference, x, PLAIN, torch.float32)


def test_autocast_mixed_precision(kernel_backend):
    x = msda_inputs(2, 7, 3, 30, ODD_LEVELS, 3, device="cuda", reference_dim=4)
    x["value"] = x["value"].half()  # what a half-precision value projection produces under autocast
    with torch.autocast("cuda", dtype=torch.float16):
        out = ops.multi_scale_deformable_attention_fused(*(x[n] for n in FUSED))
    assert out.dtype == torch.float32
    want = ops.ms_deform_attn_fused_reference(*(x[n].double() if x[n].is_floating_point() else x[n]
                                                for n in FUSED))
    _close(out, want, torch.float32, "output")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rescore_against_reference(kernel_backend, dtype):
    x = rescore_inputs(37, 17, dtype=dtype, device="cuda")
    x["active"][0] = False
    x["cholesky"] = x["cholesky"] * 0.3  # pixel covariances stay below the float16 range
    x["image_wh"] = x["image_wh"] / 20
    x["active"][1] = True
    x["cholesky"][1] = torch.tensor([200.0, 0.0, 200.0], dtype=dtype)  # the fused score saturates: clamp
    x["score"][1], x["score"][2] = 1.0, 0.0
    got = ops.gaussian_rescore(*(x[n] for n in RESCORE))
    want = ops.gaussian_rescore_reference(*(x[n].double() if x[n].is_floating_point() else x[n]
                                            for n in RESCORE))
    for what, g, w in zip(("score", "trace", "covariance"), got, want):
        assert g.dtype == dtype and torch.equal(torch.isnan(g), torch.isnan(w))
        _close(g.nan_to_num(), w.nan_to_num(), dtype, what)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rescore_non_finite_inputs_match_the_reference(kernel_backend, dtype):
    x = rescore_special_inputs(dtype=dtype, device="cuda")
    got = ops.gaussian_rescore(*(x[n] for n in RESCORE))
    want = ops.gaussian_rescore_reference(*(x[n] for n in RESCORE))
    for what, g, w in zip(("score", "log mean trace"), got[:2], want[:2]):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7, equal_nan=True, msg=what)


def _cuda_tool(name: str) -> str | None:
    nvcc = cuda_lib.find_nvcc()
    candidates = [shutil.which(name)] + ([str(Path(nvcc).parent / name)] if nvcc else [])
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_clean(tool, tmp_path):
    nvcc, sanitizer = cuda_lib.find_nvcc(), _cuda_tool("compute-sanitizer")
    if nvcc is None or sanitizer is None:
        pytest.skip("nvcc and compute-sanitizer are needed")
    root = cuda_lib.csrc_dir() / "kernels"
    sources = [root / "sanitize" / "sanitize_main.cu", *sorted((root / "ms_deform_attn").glob("*.cu")),
               *sorted((root / "gaussian_rescore").glob("*.cu"))]
    major, minor = torch.cuda.get_device_capability()
    exe = tmp_path / "sanitize"
    build = subprocess.run([nvcc, "-std=c++17", "-O1", "-lineinfo", *cuda_lib.gencode_flags([f"{major}{minor}"]),
                            "-o", str(exe), *map(str, sources)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([sanitizer, "--tool", tool, "--error-exitcode", "1", str(exe)], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    assert "all launches completed" in run.stdout
    # each tool ends with its own summary line (racecheck counts hazards, not errors)
    summary = "ERROR SUMMARY: 0 errors" if tool == "memcheck" else "RACECHECK SUMMARY: 0 hazards displayed"
    assert summary in run.stdout + run.stderr, (run.stdout + run.stderr)[-6000:]


def test_a_cuda_library_that_does_not_run_falls_back(monkeypatch):
    """The capability check launches the CUDA library once: a library that loads but cannot run here (e.g. its
    CUDA runtime newer than the driver) hands over to the next backend instead of failing every op."""
    if cuda_lib.find_nvcc() is None:
        pytest.skip("nvcc not found")
    from rfkp.ops import cuda_ops

    backend.set_ops_backend(None)
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert backend._cuda_probe(torch.device("cuda")) is None  # the real library runs

    def insufficient_driver(*args, **kwargs):
        raise RuntimeError("rfkp CUDA kernel failed (code 35): CUDA driver version is insufficient")

    monkeypatch.setattr(cuda_ops, "ms_deform_attn_forward", insufficient_driver)
    assert "does not run on this GPU" in backend._cuda_probe(torch.device("cuda"))
    assert ops.ops_backend("cuda") != "cuda"
    backend.set_ops_backend(None)
