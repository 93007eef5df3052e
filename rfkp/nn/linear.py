"""Linear layers whose CPU inference runs on oneDNN.

PyTorch's CPU ``F.linear`` calls the BLAS it was built with (MKL for the PyPI wheels). On AMD CPUs MKL takes a
generic code path and reaches about half of what oneDNN (also bundled in every x86 wheel) gets from the same
cores: about 210 vs 430 GFLOP/s for the ViT's products at 576 px on 2 threads of an AVX-512 EPYC, 2.4x over the
model's main products with the activation fused (``benchmarks/results/linear_backends_cpu.json``). So, for fp32
CPU inference, ``Linear`` and ``linear`` call ``torch.ops.mkldnn._linear_pointwise``, optionally with a ReLU or
GELU fused in. Everything else takes ``F.linear``:
training (grad mode on), other devices and dtypes, and graph capture (TorchScript tracing, ONNX export,
``torch.compile``/``torch.export``), which must see the standard op.

The results differ from ``F.linear`` by rounding only (a different summation order). Set ``RFKP_ONEDNN_LINEAR=0``
or call ``set_onednn_linear(False)`` to use ``F.linear`` everywhere.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

_enabled = os.environ.get("RFKP_ONEDNN_LINEAR", "1").strip().lower() not in ("0", "false", "no", "off")


def set_onednn_linear(enabled: bool) -> None:
    """Turn the oneDNN path of CPU inference on or off for this process."""
    global _enabled
    _enabled = bool(enabled)


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this PyTorch build runs ``mkldnn._linear_pointwise`` on this CPU (checked once, on a tiny case)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
        with torch.no_grad():
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 3.0)))
    except (RuntimeError, NotImplementedError):
        return False


def _capturing() -> bool:
    return (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or getattr(torch.compiler, "is_exporting", lambda: False)()  # torch >= 2.6
    )


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    # mismatched shapes go to F.linear, whose error names them (oneDNN's does not)
    return (
        _enabled
        and x.dim() >= 1
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and (bias is None or (bias.shape == weight.shape[:1] and bias.dtype == torch.float32 and bias.is_contiguous()))
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.layout == torch.strided
        and not _capturing()
        and onednn_linear_available()
    )


_ACTIVATIONS = {None: None, "relu": F.relu, "gelu": F.gelu}


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """``F.linear`` followed by ``activation`` (None, "relu" or the exact "gelu"), on oneDNN (activation fused)
    for fp32 CPU inference."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(_ACTIVATIONS)}, got {activation!r}")
    if _use_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation or "none", [], "none")
    out = F.linear(x, weight, bias)
    act = _ACTIVATIONS[activation]
    return out if act is None else act(out)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) with the oneDNN inference path of ``linear``."""

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)
