"""Atomic training-state checkpoints (exact resume) and the inference checkpoints a run produces.

A run directory holds:

- ``checkpoint.pt``: the full training state (model, EMA, optimiser, scheduler position, AMP scaler, step,
  epoch, best AP, torch RNG state). Written to a temporary file and renamed, so a crash never leaves a torn file.
- ``last.pt`` and ``best.pt``: rfkp-format inference checkpoints of the EMA weights (``RFDETRKeypoint.from_checkpoint``
  reads them), ``best.pt`` the one with the highest validation AP so far; without a validation set, the same
  weights as ``last.pt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rfkp.checkpoint import CheckpointError

TRAIN_STATE_FORMAT = "rfkp-train-state"
TRAIN_STATE_VERSION = 1


def _remove_stale_partials(path: Path) -> None:
    """Delete the ``.NAME.PID.tmp`` files of writers that died mid-write (a killed run leaves one each)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # raises when no such process runs
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive but someone else's
            continue


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failure (a full disk) no partial file stays


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
