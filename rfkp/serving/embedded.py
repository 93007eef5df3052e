"""Locate a Triton Inference Server binary and build the environment it needs.

Two sources, in this order of preference when nothing is asked for explicitly:

* the embedded default: the real ``tritonserver`` (2.51, python backend only) bundled in the
  ``nvidia-pytriton`` wheel. It is launched directly, not through PyTriton: a backend folder is built
  with ``libtriton_python.so``, ``triton_python_backend_utils.py`` (without it the stub cannot import
  any ``model.py``) and the ``triton_python_backend_stub`` of this interpreter's Python version side
  by side, ``LD_LIBRARY_PATH`` gets the interpreter's LIBDIR (the stub links
  ``libpython3.X.so``) and the wheel's ``nvidia_pytriton.libs``, and the interpreter's ``bin``
  folder goes first on ``PATH`` (the stub finds packages through ``python3`` on ``PATH``).
* a ``tritonserver`` found on ``PATH`` (for example inside the NGC container), used with its own
  backends.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "TritonInstallation",
    "TritonNotFoundError",
    "embedded_installation",
    "find_installation",
    "system_installation",
]


class TritonNotFoundError(RuntimeError):
    """No usable ``tritonserver`` binary was found."""


@dataclass(frozen=True)
class TritonInstallation:
    """Where a ``tritonserver`` binary lives and what it needs to run.

    ``backend_sources`` maps a backend name to the files that must sit side by side in that
    backend's folder (empty for a system install, which brings its own backend directory).
    """

    binary: Path
    kind: str  # "embedded" or "system"
    library_dirs: tuple[Path, ...] = ()
    backend_sources: dict[str, tuple[Path, ...]] = field(default_factory=dict)

    def prepare_backend_dir(self, dest: Path) -> Path | None:
        """Link the backend files into ``dest/<backend>/``; return ``dest`` (None for a system install)."""
        if not self.backend_sources:
            return None
        for backend, files in self.backend_sources.items():
            folder = dest / backend
            folder.mkdir(parents=True, exist_ok=True)
            for src in files:
                link = folder / src.name
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(src)
        return dest

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The process environment for the server: library path and ``PATH`` as described above."""
        env = dict(os.environ if base is None else base)
        if self.library_dirs:
            paths = [str(p) for p in self.library_dirs]
            if env.get("LD_LIBRARY_PATH"):
                paths.append(env["LD_LIBRARY_PATH"])
            env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
        # The python backend stub runs models with the `python3` it finds on PATH: make it this
        # interpreter's (a venv's bin holds a `python3` link, so this also works from a venv).
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")]).rstrip(os.pathsep)
        return env


def _python_libdir() -> Path:
    """The folder holding ``libpython3.X.so`` of this interpreter (a venv keeps its base's)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        raise TritonNotFoundError("this Python does not report a LIBDIR; cannot locate libpython for the stub")
    return Path(libdir)


def embedded_installation() -> TritonInstallation:
    """The ``tritonserver`` bundled in ``nvidia-pytriton``; raises TritonNotFoundError if unusable."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(
            "the embedded Triton server needs the 'nvidia-pytriton' wheel: pip install 'rfkp[serving]'"
        )
    pkg = Path(next(iter(spec.submodule_search_locations)))
    root = pkg / "tritonserver"
    binary = root / "bin" / "tritonserver"
    backend_lib = root / "backends" / "python" / "libtriton_python.so"
    backend_utils = root / "backends" / "python" / "triton_python_backend_utils.py"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    libs = pkg.parent / "nvidia_pytriton.libs"
    required = (
        (binary, "server binary"),
        (backend_lib, "python backend"),
        (backend_utils, "python backend utilities"),
        (stub, f"python {version} stub"),
    )
    for path, what in required:
        if not path.exists():
            raise TritonNotFoundError(f"nvidia-pytriton is installed but its {what} is missing: {path}")
    libdir = _python_libdir()
    ldlib = sysconfig.get_config_var("LDLIBRARY") or f"libpython{version}.so"
    if not (libdir / ldlib).exists() and not any(libdir.glob(f"libpython{version}*.so*")):
        raise TritonNotFoundError(
            f"the python backend stub needs the shared library libpython{version}.so, not found in {libdir}; "
            "use a Python built with --enable-shared"
        )
    return TritonInstallation(
        binary=binary,
        kind="embedded",
        library_dirs=(libdir, libs),
        backend_sources={"python": (backend_lib, backend_utils, stub)},
    )


def system_installation() -> TritonInstallation:
    """A ``tritonserver`` on ``PATH`` with its own backends; raises TritonNotFoundError if none."""
    found = shutil.which("tritonserver")
    if found is None:
        raise TritonNotFoundError("no 'tritonserver' on PATH")
    return TritonInstallation(binary=Path(found), kind="system")


def find_installation(prefer: str = "auto") -> TritonInstallation:
    """Pick a server: ``prefer`` is "embedded", "system" or "auto" (embedded first, then PATH)."""
    if prefer == "embedded":
        return embedded_installation()
    if prefer == "system":
        return system_installation()
    if prefer != "auto":
        raise ValueError(f"prefer must be 'auto', 'embedded' or 'system', got {prefer!r}")
    errors = []
    for finder in (embedded_installation, system_installation):
        try:
            return finder()
        except TritonNotFoundError as exc:
            errors.append(str(exc))
    raise TritonNotFoundError("no Triton server available: " + "; ".join(errors))
