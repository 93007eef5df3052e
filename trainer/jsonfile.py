"""JSON side files of the command line (sigmas, detections): precise errors for a missing or malformed file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.data.values import is_finite_number, short_repr

if TYPE_CHECKING:
    from trainer.data.schema import DatasetSchema


def load_json(path: Path, what: str) -> Any:
    """The parsed file.

    Raises:
        FileNotFoundError: no such file. IsADirectoryError: a folder. ValueError: malformed JSON (with line and
            column) or not UTF-8; each naming ``what`` and the file.
    """
    if path.is_dir():
        raise IsADirectoryError(f"{what} file {path} is a folder; give the JSON file")
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
    except RecursionError:
        raise ValueError(f"{path.name}: JSON nested too deeply to read") from None


def _is_sigma(value: Any) -> bool:
    return is_finite_number(value) and value > 0


def load_sigmas(path: Path | None, schema: DatasetSchema | None = None) -> dict[str, Any] | None:
    """A ``--sigmas`` file: a JSON object {category id or name: sigma or [one per keypoint]}, or None.

    With ``schema``, the entries are also checked against its categories (a known category; one sigma, or one
    per keypoint of that category), so a bad file fails before any model runs.

    Raises:
        ValueError: not an object, or an entry that is not a sigma > 0 or a list of them (naming the file and the
            entry); with ``schema``, an unknown category or a list of the wrong length.
    """
    if path is None:
        return None
    sigmas = load_json(path, "sigmas")
    if not isinstance(sigmas, dict):
        raise ValueError(f"{path.name}: expected a JSON object {{category: sigma(s)}}")
    for key, value in sigmas.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(_is_sigma(v) for v in values):
            raise ValueError(
                f"{path.name}: entry {key!r}: expected a sigma (a finite number > 0) or a list of them, one per "
                f"keypoint, got {short_repr(value)}"
            )
    if schema is not None:
        from trainer.evaluation.sigmas import category_sigmas

        try:
            category_sigmas(schema, sigmas)
        except ValueError as err:
            raise ValueError(f"{path.name}: {err}") from None
    return sigmas


def finite_or_none(value: Any) -> Any:
    """NaN and infinities as None (JSON null), recursively through dicts and lists: strict JSON for records."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps_strict(value: Any, indent: int | None = None) -> str:
    """JSON text with NaN and infinities written as null (``finite_or_none``): what every record rfkp writes is."""
    return json.dumps(finite_or_none(value), indent=indent, allow_nan=False)
