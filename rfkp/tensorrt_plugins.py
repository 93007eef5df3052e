"""Build, locate and inspect the TensorRT plugin library `librfkp_trt_plugins.so` (csrc/tensorrt).

`build_plugins` configures and builds it with CMake: against a real libnvinfer, or (`stub=True`, for machines
without TensorRT) against a stub libnvinfer that records registrations, plus a C test shim. `cached_build`
keeps one stub build per source hash under the rfkp cache folder. `plugin_library_path` finds a built library.
`load_shim` loads a stub build with ctypes and declares the shim's C API, through which its plugins can be
driven the way TensorRT would (creators, fields, build-phase queries, serialisation, enqueue on device pointers);
`registered_creators` and `entry_point_creators` list the creators.

Nothing is built or loaded at import. Environment: RFKP_TRT_PLUGIN_LIB (a built library), RFKP_CACHE_DIR.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from rfkp.cache import cache_root
from rfkp.ops import cuda_lib

LIBRARY_NAME = "librfkp_trt_plugins.so"
SHIM_NAME = "librfkp_trt_shim.so"
DEFAULT_ARCHS = ("75", "90")

# TensorRT enum values (NvInferRuntimeBase.h, NvInferPluginBase.h, NvInferRuntime.h).
FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64 = range(9)  # nvinfer1::DataType
LINEAR, CHW2, HWC8 = 0, 1, 2  # nvinfer1::TensorFormat
FIELD_FLOAT16, FIELD_FLOAT32, FIELD_FLOAT64, FIELD_INT8, FIELD_INT16, FIELD_INT32, FIELD_CHAR = range(7)
BUILD_PHASE, RUNTIME_PHASE = 0, 1  # nvinfer1::TensorRTPhase


class TensorRTPluginError(RuntimeError):
    """The plugin library could not be built, found or driven (the message says why)."""


def source_dir() -> Path:
    """csrc/tensorrt, the CMake project of the plugins."""
    return cuda_lib.csrc_dir() / "tensorrt"


def default_tensorrt_include() -> Path | None:
    """The TensorRT 10 headers shipped in the `kernel-lens` wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("kernel_lens")
    if spec is None or spec.origin is None:
        return None
    include = Path(spec.origin).parent / "include" / "tensorrt"
    return include if (include / "NvInferRuntime.h").is_file() else None


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-4000:]
        raise TensorRTPluginError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{output}")


def build_plugins(out_dir: Path | str, archs: Sequence[str] = DEFAULT_ARCHS, stub: bool = False,
                  tensorrt_include: Path | str | None = None, tensorrt_lib: Path | str | None = None,
                  *, jobs: int = 2) -> Path:
    """Configure and build csrc/tensorrt in `out_dir` for compute capabilities `archs`; returns the library.

    `tensorrt_include` defaults to the kernel-lens headers; `tensorrt_lib` (a libnvinfer.so) is searched by
    CMake when omitted. With `stub=True` the library links a stub libnvinfer and the test shim is built too
    (both in `out_dir/stub`). CMake rebuilds incrementally when `out_dir` already holds a build.
    """
    cmake = shutil.which("cmake")
    nvcc = cuda_lib.find_nvcc()
    include = Path(tensorrt_include) if tensorrt_include else default_tensorrt_include()
    if cmake is None or nvcc is None:
        raise TensorRTPluginError(f"building the plugins needs cmake and nvcc (cmake={cmake}, nvcc={nvcc})")
    if include is None:
        raise TensorRTPluginError("TensorRT headers not found: pass tensorrt_include or install kernel-lens")
    if not archs or not all(a.isdigit() for a in archs):
        raise ValueError(f"architectures must be digit strings such as '75' or '90', got {list(archs)}")
    out = Path(out_dir)
    configure = [cmake, "-S", str(source_dir()), "-B", str(out), f"-DTENSORRT_INCLUDE_DIR={include}",
                 f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}", f"-DCMAKE_CUDA_COMPILER={nvcc}",
                 f"-DRFKP_TRT_STUB={'ON' if stub else 'OFF'}"]
    if tensorrt_lib:
        configure.append(f"-DTENSORRT_LIB={tensorrt_lib}")
    _run(configure)
    _run([cmake, "--build", str(out), "-j", str(jobs)])
    library = out / LIBRARY_NAME
    if not library.is_file():
        raise TensorRTPluginError(f"the build finished without {library}")
    return library


def _source_hash(archs: Sequence[str], stub: bool, include: Path) -> str:
    root = cuda_lib.csrc_dir()
    files = sorted(p for d in ("tensorrt", "kernels") for p in (root / d).rglob("*")
                   if p.suffix in {".cu", ".cuh", ".h", ".cpp", ".txt"})
    digest = hashlib.sha256(f"{list(archs)} {stub} {include}".encode())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    nvcc = cuda_lib.find_nvcc()
    if nvcc:
        digest.update(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.encode())
    return digest.hexdigest()[:16]


def cached_build(archs: Sequence[str] = DEFAULT_ARCHS, *, stub: bool = True,
                 tensorrt_include: Path | str | None = None) -> Path:
    """`build_plugins` into `<cache>/trt/<archs>-<hash>`, built once per source hash; returns the library.

    The build runs in a temporary folder renamed into place, so concurrent callers are safe (the library's
    run path is relative, so the renamed build still loads its stub libnvinfer).
    """
    include = Path(tensorrt_include) if tensorrt_include else default_tensorrt_include()
    if include is None:
        raise TensorRTPluginError("TensorRT headers not found: pass tensorrt_include or install kernel-lens")
    kind = "stub" if stub else "trt"
    target = cache_root() / "trt" / f"{'-'.join(archs)}-{kind}-{_source_hash(archs, stub, include)}"
    if (target / LIBRARY_NAME).is_file():
        return target / LIBRARY_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build_plugins(work, archs, stub=stub, tensorrt_include=include)
        try:
            work.rename(target)
        except OSError:  # another process finished the same build first
            if not (target / LIBRARY_NAME).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / LIBRARY_NAME


def plugin_library_path() -> Path:
    """The built library: $RFKP_TRT_PLUGIN_LIB, else build/tensorrt/ of the repository (the README's build)."""
    env = os.environ.get("RFKP_TRT_PLUGIN_LIB")
    path = Path(env) if env else cuda_lib.csrc_dir().parent / "build" / "tensorrt" / LIBRARY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build csrc/tensorrt with CMake (see csrc/tensorrt/README.md) "
                                "or set RFKP_TRT_PLUGIN_LIB")
    return path


@dataclass(frozen=True)
class CreatorInfo:
    """A plugin creator as TensorRT sees it. `fields`: (name, PluginFieldType code, length) per field;
    `registered_namespace`: the namespace it was registered under (None for creators from getCreators())."""

    name: str
    version: str
    namespace: str
    registered_namespace: str | None
    fields: tuple[tuple[str, int, int], ...]


class ShimTensor(ctypes.Structure):
    """RfkpShimTensor of the shim: DataType and TensorFormat codes, rank, extents (-k: the symbol "s<k>")."""

    _fields_ = [("type", ctypes.c_int32), ("format", ctypes.c_int32), ("rank", ctypes.c_int32),
                ("reserved", ctypes.c_int32), ("dims", ctypes.c_int64 * 8)]


def shim_tensors(specs: Sequence[tuple[int, Sequence[int]] | tuple[int, Sequence[int], int]]) -> ctypes.Array:
    """A ShimTensor array from (type, shape) or (type, shape, format) tuples (format defaults to LINEAR)."""
    array = (ShimTensor * len(specs))()
    for slot, spec in zip(array, specs):
        slot.type, shape = spec[0], list(spec[1])
        slot.format = spec[2] if len(spec) > 2 else LINEAR
        slot.rank = len(shape)
        slot.dims[: len(shape)] = shape
    return array


def _declare_shim(shim: ctypes.CDLL) -> ctypes.CDLL:
    p, i32, s = ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p
    t, pi32, pp = ctypes.POINTER(ShimTensor), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_void_p)
    signatures = {
        "rfkp_shim_last_error": ([], s),
        "rfkp_shim_registry_json": ([], s),
        "rfkp_shim_entry_point_json": ([s], s),
        "rfkp_shim_create": ([s, s, s, i32, ctypes.POINTER(s), pi32, pp, pi32, i32], p),
        "rfkp_shim_destroy": ([p], None),
        "rfkp_shim_describe_json": ([p], s),
        "rfkp_shim_nb_outputs": ([p], i32),
        "rfkp_shim_output_types": ([p, pi32, i32, pi32, i32], i32),
        "rfkp_shim_supports": ([p, i32, t, i32, i32], i32),
        "rfkp_shim_output_shapes_json": ([p, t, i32, i32], s),
        "rfkp_shim_configure": ([p, t, i32, i32], i32),
        "rfkp_shim_workspace_size": ([p, t, i32, i32], ctypes.c_int64),
        "rfkp_shim_clone": ([p], p),
        "rfkp_shim_attach_to_context": ([p], p),
        "rfkp_shim_serialized_fields_json": ([p], s),
        "rfkp_shim_deserialize": ([p], p),
        "rfkp_shim_enqueue": ([p, t, i32, i32, pp, pp, p, p], i32),
    }
    for name, (args, restype) in signatures.items():
        fn = getattr(shim, name)
        fn.argtypes, fn.restype = args, restype
    return shim


@cache
def load_shim(lib: Path | str) -> ctypes.CDLL:
    """Load a stub build: its stub libnvinfer (global), the plugin library (which registers its creators with
    the stub registry) and the test shim, with its C signatures declared. Once per process and library."""
    lib = Path(lib).resolve()
    stub_dir = lib.parent / "stub"
    nvinfer = sorted(stub_dir.glob("libnvinfer.so.*"))
    if not lib.is_file() or not nvinfer or not (stub_dir / SHIM_NAME).is_file():
        raise TensorRTPluginError(f"{lib} is not a stub build (expected stub/libnvinfer.so.N and stub/{SHIM_NAME})")
    ctypes.CDLL(str(nvinfer[0]), mode=ctypes.RTLD_GLOBAL)
    plugins = ctypes.CDLL(str(lib))
    shim = _declare_shim(ctypes.CDLL(str(stub_dir / SHIM_NAME)))
    shim.plugin_library = plugins  # keeps the handle with the shim
    return shim


def _json_call(shim: ctypes.CDLL, fn_name: str, *args: object) -> list | dict:
    text = getattr(shim, fn_name)(*args)
    if text is None:
        raise TensorRTPluginError(f"{fn_name}: {shim.rfkp_shim_last_error().decode(errors='replace')}")
    return json.loads(text)


def _creator_info(entry: dict) -> CreatorInfo:
    return CreatorInfo(entry["name"], entry["version"], entry["namespace"], entry.get("registered_namespace"),
                       tuple((f["name"], f["type"], f["length"]) for f in entry["fields"]))


def registered_creators(lib: Path | str | None = None) -> list[CreatorInfo]:
    """Creators registered with the stub registry by loading `lib` (a stub build; default
    `plugin_library_path()`), in registration order."""
    shim = load_shim(lib or plugin_library_path())
    return [_creator_info(e) for e in _json_call(shim, "rfkp_shim_registry_json")]


def entry_point_creators(lib: Path | str | None = None) -> list[CreatorInfo]:
    """Creators returned by the library's getCreators() entry point (what IPluginRegistry::loadLibrary uses)."""
    path = Path(lib or plugin_library_path()).resolve()
    shim = load_shim(path)
    return [_creator_info(e) for e in _json_call(shim, "rfkp_shim_entry_point_json", str(path).encode())]
