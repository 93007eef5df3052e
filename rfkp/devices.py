"""One place that turns a user's device name into a ``torch.device``, or says precisely why it cannot."""

from __future__ import annotations

import argparse

import torch

__all__ = ["device_arg", "resolve_device"]


def resolve_device(device: str | int | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; None picks ``cuda`` when a GPU is visible, else ``cpu``; an int N is
    ``cuda:N``; names are not case-sensitive.

    Raises:
        ValueError: a name torch does not know, or a device this machine does not have (CUDA without a GPU
            or with a CUDA-less torch, an index past the GPUs present, a backend that is not available).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"  # torch's convention for a bare index
    elif isinstance(device, str):
        device = device.strip().lower()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(
                f"device {str(device)!r} asked for, but CUDA is not available ({why}); use the cpu device"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"device {str(device)!r} asked for, but only {count} GPU(s) are visible (cuda:0..{count - 1})"
            )
        return dev
    backend = getattr(torch, dev.type, None) or getattr(torch.backends, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise ValueError(
            f"device {str(device)!r} asked for, but the {dev.type} backend is not available here"
        )
    return dev


def device_arg(text: str) -> str:
    """argparse ``type=`` for ``--device``: checks the name early; returns torch's spelling (``CUDA:1`` ->
    ``cuda:1``)."""
    try:
        return str(resolve_device(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
