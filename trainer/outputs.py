"""The files the training commands write: checked before the work (not an input, not a folder, a writable
place, a plot format matplotlib knows), and written with their parent folders created."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from rfkp.cli.paths import check_output_file, check_output_folder, refuse_overwriting_inputs

__all__ = ["check_output_folder", "check_outputs", "check_plot_file", "write_text"]

PathLike = str | os.PathLike


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]) -> None:
    """Check every output file (by option name; None skipped) before any work.

    Raises:
        ValueError: an output names an input or another output.
        IsADirectoryError: an output is a folder. NotADirectoryError: a parent of an output is a file.
    """
    refuse_overwriting_inputs(outputs, inputs)
    for option, path in outputs.items():
        if path is not None:
            check_output_file(path, option)


def check_plot_file(path: PathLike | None, option: str) -> None:
    """A figure file: its suffix must name a format matplotlib writes (else the plot fails after the work).

    Raises:
        ValueError: no suffix or an unknown one.
    """
    if path is None:
        return
    from matplotlib.backend_bases import FigureCanvasBase

    formats = set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}  # pgf needs a LaTeX installation
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        shown = f"'.{suffix}'" if suffix else "no suffix"
        raise ValueError(
            f"{option} {path}: {shown} is not an image format matplotlib writes; use .png, .pdf or .svg "
            f"(all: {', '.join(sorted(formats))})"
        )


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path``, creating its parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
