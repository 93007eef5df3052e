"""One stub build of the TensorRT plugins per test session (cached across sessions by source hash).

It is compiled for a single architecture to keep the first build short: the GPU's own when torch sees one,
else sm_75. Skipped with the reason when cmake, nvcc or the TensorRT headers (kernel-lens) are missing.
"""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest
import torch

from rfkp import tensorrt_plugins
from rfkp.ops import cuda_lib


def _test_arch() -> str:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}{minor}"
    return "75"


@pytest.fixture(scope="session")
def stub_library() -> Path:
    """librfkp_trt_plugins.so linked against the stub libnvinfer, with the test shim beside it."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    if cuda_lib.find_nvcc() is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    if tensorrt_plugins.default_tensorrt_include() is None:
        pytest.skip("TensorRT headers not found (pip install kernel-lens)")
    return tensorrt_plugins.cached_build([_test_arch()], stub=True)


@pytest.fixture(scope="session")
def shim(stub_library: Path) -> ctypes.CDLL:
    """The loaded stub build: stub libnvinfer, plugin library (registered) and the shim's C API."""
    return tensorrt_plugins.load_shim(stub_library)
