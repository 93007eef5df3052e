"""The folder rfkp keeps derived files in: built kernel libraries, TensorRT plugin builds, exported graphs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$RFKP_CACHE_DIR``, else ``$XDG_CACHE_HOME/rfkp``, else ``~/.cache/rfkp``. Each user of the cache takes
    a sub-folder of its own (``kernels``, ``trt``, ``onnx``)."""
    env = os.environ.get("RFKP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rfkp"
