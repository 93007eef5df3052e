"""Checks on the files a command is about to write, done before the work so that nothing is lost."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["check_output_file", "check_output_folder", "refuse_overwriting_inputs"]

PathLike = str | os.PathLike


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _resolved(path: Path) -> str:
    """The path with links resolved; a link loop (RuntimeError on Python < 3.13) keeps what can be resolved."""
    return os.path.realpath(path)


def refuse_overwriting_inputs(
    outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]
) -> None:
    """Raise ValueError when an output path names one of the inputs (or another output).

    Keys are the option names the user typed (e.g. ``"--json"``); None values are skipped. Paths are compared
    resolved, and as the same file on disk (hard links, symlinks).
    """
    named_out = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    named_in = [(k, Path(v)) for k, v in inputs.items() if v is not None]
    for i, (out_name, out) in enumerate(named_out):
        for in_name, source in named_in + named_out[:i]:
            if _resolved(out) == _resolved(source) or _same(out, source):
                raise ValueError(f"{out_name} {out} is also {in_name}: it would be overwritten; choose another path")


def _check_parents(path: Path, option: str) -> Path:
    """The nearest existing folder above ``path`` must be a folder one can write in (probed with a temporary
    file: permissions, read-only mounts and pseudo file systems all show)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{option} {path}: {parent} is a file, not a folder")
            _probe_writable(parent, f"{option} {path}")
            break
    return path


def check_output_file(path: PathLike, option: str) -> Path:
    """A file about to be written: not a folder (nor a name ending in a separator, which means one), and its
    parent a folder or creatable. Returns it as a Path."""
    if isinstance(path, str) and path.endswith(("/", os.sep)):
        raise IsADirectoryError(f"{option} {path} names a folder; give a file name")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name")
    return _check_parents(path, option)


def check_output_folder(path: PathLike, option: str) -> Path:
    """A folder about to be written into: a folder one can write in, or creatable (no file in its place or above
    it, the nearest existing folder writable).

    Raises:
        NotADirectoryError: ``path`` or one of its parents is a file. PermissionError: it cannot be written in.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file; give a folder")
    if path.is_dir():
        _probe_writable(path, f"{option} {path}")
        return path
    return _check_parents(path, option)


def _probe_writable(folder: Path, what: str) -> None:
    """Create and drop a temporary file in ``folder`` (permissions, read-only mounts and pseudo file systems
    all show); PermissionError naming ``what`` when that fails."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from None
