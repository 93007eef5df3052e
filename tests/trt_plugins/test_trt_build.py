"""The plugin library builds against the stub libnvinfer, links what TensorRT expects and exports only its
entry points; the Python helpers locate builds and fail with clear messages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from rfkp import tensorrt_plugins


def _dynamic_symbols(path: Path, *flags: str) -> set[str]:
    out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def _needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.fixture(scope="module")
def binutils() -> None:
    if shutil.which("nm") is None or shutil.which("readelf") is None:
        pytest.skip("nm / readelf not found")


@pytest.mark.usefixtures("binutils")
def test_library_exports_only_the_plugin_entry_points(stub_library: Path) -> None:
    exported = {s for s in _dynamic_symbols(stub_library, "--defined-only") if not s.startswith("_Z")}
    assert exported == {"getCreators", "setLoggerFinder"}
    mangled = {s for s in _dynamic_symbols(stub_library, "--defined-only") if s.startswith("_Z")}
    assert not [s for s in mangled if "rfkp" in s], "kernel / plugin symbols leak out of the library"


@pytest.mark.usefixtures("binutils")
def test_library_links_libnvinfer_and_the_static_cuda_runtime(stub_library: Path) -> None:
    needed = _needed(stub_library)
    assert "libnvinfer.so.10" in needed
    assert not [n for n in needed if "cudart" in n or "libcuda" in n]
    undefined = _dynamic_symbols(stub_library, "--undefined-only")
    assert "getPluginRegistry" in undefined and "getLogger" in undefined
    stub = _dynamic_symbols(next((stub_library.parent / "stub").glob("libnvinfer.so.*")), "--defined-only")
    assert {"getPluginRegistry", "getLogger", "getInferLibMajorVersion"} <= stub


def test_cached_build_is_reused(stub_library: Path) -> None:
    arch = stub_library.parent.name.split("-")[0]
    assert tensorrt_plugins.cached_build([arch], stub=True) == stub_library


def test_missing_headers_fail_with_the_reason(tmp_path: Path) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    with pytest.raises(tensorrt_plugins.TensorRTPluginError, match="NvInferRuntime.h not found"):
        tensorrt_plugins.build_plugins(tmp_path / "build", ["75"], stub=True, tensorrt_include=tmp_path)


def test_plugin_library_path_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / tensorrt_plugins.LIBRARY_NAME
    monkeypatch.setenv("RFKP_TRT_PLUGIN_LIB", str(lib))
    with pytest.raises(FileNotFoundError, match="RFKP_TRT_PLUGIN_LIB"):
        tensorrt_plugins.plugin_library_path()
    lib.write_bytes(b"")
    assert tensorrt_plugins.plugin_library_path() == lib


def test_load_shim_rejects_a_build_without_the_stub(tmp_path: Path) -> None:
    lib = tmp_path / tensorrt_plugins.LIBRARY_NAME
    lib.write_bytes(b"")
    with pytest.raises(tensorrt_plugins.TensorRTPluginError, match="not a stub build"):
        tensorrt_plugins.load_shim(lib)
