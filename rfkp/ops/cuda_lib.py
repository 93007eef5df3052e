"""Build and load the C-ABI CUDA library (csrc/capi + csrc/kernels) with nvcc and ctypes.

The library is compiled on first use, never at import: every `.cu` under csrc/capi, csrc/kernels/ms_deform_attn
and csrc/kernels/gaussian_rescore is compiled in parallel with `nvcc -c` for the requested architectures and
linked into `librfkp_kernels.so` with the static CUDA runtime, so it needs no CUDA runtime at load time and
works with any torch build. The result is cached in a user cache directory, keyed by a hash of the sources,
the flags and the nvcc version; a build writes into a temporary folder and renames it into place, so
concurrent builds are safe.

Environment: RFKP_CSRC_DIR (the csrc folder, default: the repository's), RFKP_CACHE_DIR (default
$XDG_CACHE_HOME/rfkp or ~/.cache/rfkp), CUDA_HOME / CUDA_PATH or nvcc on PATH.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from rfkp.cache import cache_root

LIBRARY_NAME = "librfkp_kernels.so"
CAPI_VERSION = 1
LIBRARY_SOURCE_DIRS = ("capi", "kernels/ms_deform_attn", "kernels/gaussian_rescore")
NVCC_FLAGS = ("-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-lineinfo")

logger = logging.getLogger("rfkp.ops")


class CudaLibraryError(RuntimeError):
    """The CUDA library could not be built or loaded (the message says why)."""


def csrc_dir() -> Path:
    """The csrc folder holding capi/ and kernels/."""
    env = os.environ.get("RFKP_CSRC_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "csrc"


def cache_dir() -> Path:
    """Where built libraries are cached (one sub-folder per source/flag hash): ``cache_root()/kernels``."""
    return cache_root() / "kernels"


def find_nvcc() -> str | None:
    """Path of nvcc: $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, then /usr/local/cuda/bin; None when absent."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(env)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def gencode_flags(archs: list[str]) -> list[str]:
    """`-gencode` flags for compute capabilities such as "75" or "90" (SASS for each, plus PTX of the last)."""
    if not archs or not all(a.isdigit() for a in archs):
        raise ValueError(f"architectures must be digit strings such as '75' or '90', got {archs}")
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    return flags


def library_sources(root: Path | None = None) -> list[Path]:
    """The .cu files linked into the library, sorted."""
    root = root or csrc_dir()
    return sorted(p for d in LIBRARY_SOURCE_DIRS for p in (root / d).glob("*.cu"))


def _all_source_text(root: Path) -> bytes:
    """Every source the library is built from (capi/ and kernels/; the TensorRT plugins are not part of it)."""
    files = sorted(
        p for d in ("capi", "kernels") for p in (root / d).rglob("*") if p.suffix in {".cu", ".cuh", ".h"}
    )
    return b"".join(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() for p in files)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CudaLibraryError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def build_library(archs: list[str], *, nvcc: str | None = None, out_dir: Path | None = None,
                  jobs: int | None = None) -> Path:
    """Compile and link the library for `archs`; returns the cached .so path (built only when missing)."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise CudaLibraryError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    root = csrc_dir()
    sources = library_sources(root)
    if not sources:
        raise CudaLibraryError(f"no CUDA sources under {root}")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    flags = [*NVCC_FLAGS, *gencode_flags(archs)]
    key = hashlib.sha256(_all_source_text(root) + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
    target_dir = (out_dir or cache_dir()) / f"{'-'.join(archs)}-{key}"
    target = target_dir / LIBRARY_NAME
    if target.is_file():
        return target
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building %s for sm_%s with %s (once; cached in %s)", LIBRARY_NAME, ",".join(archs), nvcc,
                target_dir)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=target_dir.parent))
    try:
        objects = [work / f"{i:02d}_{src.stem}.o" for i, src in enumerate(sources)]
        with ThreadPoolExecutor(max_workers=jobs or min(len(sources), os.cpu_count() or 1)) as pool:
            list(pool.map(lambda so: _run([nvcc, *flags, "-c", str(so[0]), "-o", str(so[1])]),
                          zip(sources, objects)))
        _run([nvcc, "-shared", *gencode_flags(archs), "-cudart", "static", *map(str, objects),
              "-o", str(work / LIBRARY_NAME)])
        for obj in objects:
            obj.unlink()
        try:
            work.rename(target_dir)
        except OSError:  # another process finished the same build first
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double  # pointers (int64 ones too) travel as void*
    dims = [i] * 7  # batch, num_value, heads, channels, levels, queries, points
    signatures = {
        "rfkp_capi_version": [],
        "rfkp_ms_deform_attn_forward": [i, p, p, p, p, p, p, *dims, p],
        "rfkp_ms_deform_attn_backward": [i, p, p, p, p, p, p, p, p, p, *dims, p],
        "rfkp_ms_deform_attn_fused_forward": [i, p, p, p, p, i, i, p, p, p, *dims, p],
        "rfkp_ms_deform_attn_fused_backward": [i, p, p, p, p, i, i, p, p, p, p, p, p, p, *dims, p],
        "rfkp_gaussian_rescore": [i, p, p, p, p, p, p, d, i, i, p, p, p, p],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    lib.rfkp_last_error.argtypes = []
    lib.rfkp_last_error.restype = ctypes.c_char_p
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    """Load a built library and check its ABI version."""
    lib = _declare(ctypes.CDLL(str(path)))
    if lib.rfkp_capi_version() != CAPI_VERSION:
        raise CudaLibraryError(f"{path} has C ABI {lib.rfkp_capi_version()}, this package needs {CAPI_VERSION}")
    return lib


@cache
def library_for(arch: str) -> ctypes.CDLL:
    """The library for one compute capability (e.g. "90"), built on first use and cached per process."""
    return load_library(build_library([arch]))


def check_status(lib: ctypes.CDLL, status: int) -> None:
    """Raise with the library's message when an entry point returned nonzero."""
    if status != 0:
        message = lib.rfkp_last_error().decode(errors="replace")
        raise RuntimeError(f"rfkp CUDA kernel failed (code {status}): {message}")
