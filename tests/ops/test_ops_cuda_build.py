"""The CUDA sources compile with nvcc for sm_75 (T4) and sm_90 (H100), and the C-ABI library links and loads.

No GPU is needed: the library links the static CUDA runtime, so it loads anywhere; without a device its
launches fail with a CUDA error code and message, which is checked too. Skipped when nvcc is absent.
"""

from __future__ import annotations

import ctypes
import subprocess

import pytest
import torch

from rfkp.ops import cuda_lib

ARCHS = ["75", "90"]
NVCC = cuda_lib.find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("rfkp-kernels")
    return cuda_lib.build_library(ARCHS, nvcc=NVCC, out_dir=out, jobs=2), out


def test_library_compiles_for_sm75_and_sm90_and_exports_the_c_abi(built):
    path, out = built
    assert path.is_file() and path.parent.parent == out
    assert cuda_lib.build_library(ARCHS, nvcc=NVCC, out_dir=out) == path  # cached: same hash, no rebuild
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True).stdout
    for name in ("rfkp_capi_version", "rfkp_last_error", "rfkp_ms_deform_attn_forward",
                 "rfkp_ms_deform_attn_backward", "rfkp_ms_deform_attn_fused_forward",
                 "rfkp_ms_deform_attn_fused_backward", "rfkp_gaussian_rescore"):
        assert f" T {name}\n" in symbols, name
    assert "libcudart" not in subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout


def test_every_other_cu_file_compiles(tmp_path):
    root = cuda_lib.csrc_dir()
    in_library = set(cuda_lib.library_sources(root))
    others = sorted(p for d in ("kernels", "capi") for p in (root / d).rglob("*.cu") if p not in in_library)
    assert others, "expected the sanitizer driver outside the library"
    for src in others:
        cmd = [NVCC, *cuda_lib.NVCC_FLAGS, *cuda_lib.gencode_flags(ARCHS), "-c", str(src),
               "-o", str(tmp_path / f"{src.stem}.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{src}:\n{proc.stderr[-3000:]}"


def test_c_abi_rejects_bad_arguments_with_a_message(built):
    lib = cuda_lib.load_library(built[0])
    assert lib.rfkp_capi_version() == cuda_lib.CAPI_VERSION
    dims = [1, 12, 2, 4, 1, 3, 2]
    status = lib.rfkp_ms_deform_attn_forward(7, None, None, None, None, None, None, *dims, None)
    assert status == 100000
    assert b"dtype code must be" in lib.rfkp_last_error()
    status = lib.rfkp_ms_deform_attn_fused_forward(0, None, None, None, None, 3, 2, None, None, None, *dims, None)
    assert status == 100000 and b"reference_levels must be 1 or levels" in lib.rfkp_last_error()
    with pytest.raises(RuntimeError, match="reference_levels must be 1 or levels"):
        cuda_lib.check_status(lib, status)
    if not torch.cuda.is_available():  # a valid call reaches the CUDA runtime, which has no device here
        status = lib.rfkp_gaussian_rescore(0, None, None, None, None, None, None, ctypes.c_double(0.2), 1, 1,
                                           None, None, None, None)
        assert status != 0 and b"rfkp_gaussian_rescore: " in lib.rfkp_last_error()


def test_gencode_flags_and_bad_arch():
    assert cuda_lib.gencode_flags(["75"]) == ["-gencode", "arch=compute_75,code=sm_75",
                                              "-gencode", "arch=compute_75,code=compute_75"]
    with pytest.raises(ValueError, match="digit strings"):
        cuda_lib.gencode_flags(["sm_90"])
