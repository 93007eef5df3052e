"""Atomic training-state checkpoints (exact resume) and the inference checkpoints a run produces.

A run directory holds:

- ``checkpoint.pt``: the full training state (model, EMA, optimiser, scheduler position, AMP scaler, step,
  epoch, best AP, torch RNG state). Written to a temporary file and renamed, so a crash never leaves a torn file.
- ``last.pt`` and ``best.pt``: rfkp-format inference checkpoints of the EMA weights (``RFDETRKeypoint.from_checkpoint``
  reads them), ``best.pt`` the one with the highest validation AP so far; without a validation set, the same
  weights as ``last.pt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rfkp.checkpoint import CheckpointError, save_atomic

TRAIN_STATE_FORMAT = "rfkp-train-state"
TRAIN_STATE_VERSION = 1


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    save_atomic({"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION, **state}, path)


def load_train_state(path: Path) -> dict[str, Any]:
    """Read a ``checkpoint.pt`` safely (weights_only); a precise error for anything else."""
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear error
        detail = f"{type(exc).__name__}: {exc}" if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read training state {path} (truncated or not a torch file?): {detail}") from None
    if not isinstance(data, dict) or data.get("format") != TRAIN_STATE_FORMAT:
        raise CheckpointError(f"{path} is not an rfkp training state (use --init for model weights)")
    if data.get("version") != TRAIN_STATE_VERSION:
        raise CheckpointError(f"{path}: unsupported training state version {data.get('version')}")
    return data
