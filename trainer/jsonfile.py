"""JSON side files of the command line (sigmas, detections): precise errors for a missing or malformed file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_json(path: Path, what: str) -> Any:
    """The parsed file; FileNotFoundError or ValueError (with line and column) naming ``what`` and the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path.name}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path.name}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def load_sigmas(path: Path | None) -> dict[str, Any] | None:
    """A ``--sigmas`` file: a JSON object {category id or name: sigma or [one per keypoint]}, or None."""
    if path is None:
        return None
    sigmas = load_json(path, "sigmas")
    if not isinstance(sigmas, dict):
        raise ValueError(f"{path.name}: expected a JSON object {{category: sigma(s)}}")
    return sigmas
