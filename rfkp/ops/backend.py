"""One explicit capability check that picks the implementation of the ops for a device.

Order for CUDA tensors: the CUDA library (built with nvcc on first use), then Triton (compute capability
8.0 or newer), then the PyTorch reference. CPU tensors use the reference; the one exception is `triton`
requested explicitly while TRITON_INTERPRET=1, which runs the Triton kernels in Triton's CPU interpreter
(for tests). The choice is made once per device, logged once at INFO on the "rfkp.ops" logger, and can be
overridden with `set_ops_backend(...)` or the environment variable RFKP_OPS_BACKEND=reference|triton|cuda
(the function wins). A requested backend that cannot run raises instead of falling back silently.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from typing import Literal, get_args

import torch

Backend = Literal["cuda", "triton", "reference"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ENV_VAR = "RFKP_OPS_BACKEND"
_TRITON_MIN_CAPABILITY = (8, 0)

logger = logging.getLogger("rfkp.ops")

_requested: str | None = None
_chosen: dict[str, str] = {}


def set_ops_backend(name: str | None) -> None:
    """Force a backend ("reference", "triton", "cuda") or restore the automatic choice (None)."""
    global _requested
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown ops backend {name!r}; expected one of {BACKENDS} or None")
    _requested = name
    _chosen.clear()


@contextlib.contextmanager
def forced_ops_backend(name: str | None) -> Iterator[None]:
    """`set_ops_backend(name)` for the duration of a block, then the previous request again (ONNX export
    forces "reference" so that CPU tensors trace the PyTorch reference, never a registered op)."""
    previous = _requested
    set_ops_backend(name)
    try:
        yield
    finally:
        set_ops_backend(previous)


def requested_backend() -> str | None:
    """The backend requested by set_ops_backend or RFKP_OPS_BACKEND, or None for automatic."""
    if _requested is not None:
        return _requested
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if not env:
        return None
    if env not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={env!r} is not one of {BACKENDS}")
    return env


def uses_reference_directly(device: torch.device) -> bool:
    """True when the public functions call the reference themselves: non-CUDA tensors, unless Triton was
    requested (interpreter). Pure and cheap, so torch.compile traces through it; CUDA tensors always go
    through the registered op, whose body makes the full capability check."""
    return device.type != "cuda" and requested_backend() not in ("triton", "cuda")


def triton_interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels imported from now on run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _triton_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device.type == "cpu":
        return None if triton_interpreter_enabled() else "Triton runs on CPU tensors only with TRITON_INTERPRET=1"
    capability = torch.cuda.get_device_capability(device)
    if capability < _TRITON_MIN_CAPABILITY:
        return f"compute capability {capability} is below {_TRITON_MIN_CAPABILITY} required by Triton kernels"
    return None


def _cuda_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the CUDA library runs on CUDA tensors only, got a {device.type} tensor"
    from rfkp.ops import cuda_lib

    major, minor = torch.cuda.get_device_capability(device)
    try:
        cuda_lib.library_for(f"{major}{minor}")
    except (cuda_lib.CudaLibraryError, OSError) as exc:
        return f"CUDA library unavailable: {exc}"
    return _cuda_probe(device)


def _cuda_probe(device: torch.device) -> str | None:
    """One tiny launch against the reference: a library that builds and loads can still fail to run (its CUDA
    runtime newer than the driver, a kernel image missing for this GPU); then the next backend is used."""
    from rfkp.ops import cuda_ops
    from rfkp.ops.ms_deform_attn import ms_deform_attn_reference
    from rfkp.ops.sample_inputs import msda_inputs

    x = msda_inputs(1, 2, 1, 4, [(3, 2)], 2, device=device)
    args = (x["value"], x["spatial_shapes"], x["level_start_index"], x["sampling_locations"], x["attention_weights"])
    try:
        out = cuda_ops.ms_deform_attn_forward(*args)
        torch.cuda.synchronize(device)
    except RuntimeError as exc:
        return f"the CUDA library does not run on this GPU: {exc}"
    if not torch.allclose(out, ms_deform_attn_reference(*args), rtol=1e-4, atol=1e-5):
        return "the CUDA library's probe launch disagrees with the reference"
    return None


def _decide(device: torch.device) -> tuple[str, str]:
    requested = requested_backend()
    if device.type == "cpu":
        if requested == "cuda":
            raise RuntimeError(f"ops backend 'cuda' was requested but cannot run on CPU: {_cuda_unavailable(device)}")
        if requested == "triton":
            why = _triton_unavailable(device)
            if why:
                raise RuntimeError(f"ops backend 'triton' was requested but cannot run on CPU: {why}")
            return "triton", "requested, Triton interpreter"
        return "reference", "CPU tensors use the PyTorch reference"
    if device.type != "cuda":
        if requested not in (None, "reference"):
            raise RuntimeError(f"ops backend {requested!r} cannot run on {device.type} tensors")
        return "reference", f"no kernels for {device.type}"
    if requested == "reference":
        return "reference", "requested"
    if requested is not None:
        why = (_cuda_unavailable if requested == "cuda" else _triton_unavailable)(device)
        if why:
            raise RuntimeError(f"ops backend {requested!r} was requested but cannot run: {why}")
        return requested, "requested"
    reasons = []
    for name, check in (("cuda", _cuda_unavailable), ("triton", _triton_unavailable)):
        why = check(device)
        if why is None:
            return name, "capability check" + (f" ({'; '.join(reasons)})" if reasons else "")
        reasons.append(f"{name}: {why}")
    return "reference", "; ".join(reasons)


def ops_backend(device: torch.device | str) -> str:
    """The backend used for tensors on `device`: "cuda", "triton" or "reference" (decided once, logged once)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    chosen = _chosen.get(key)
    if chosen is None:
        chosen, reason = _decide(device)
        _chosen[key] = chosen
        logger.info("rfkp.ops backend for %s: %s (%s)", key, chosen, reason)
    return chosen
