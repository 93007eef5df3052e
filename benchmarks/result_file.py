"""One writer for benchmark result files: the results plus device, versions, date and the command."""

from __future__ import annotations

import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from trainer.jsonfile import dumps_strict  # re-exported: result files are strict JSON (NaN and inf as null)


def result_path(text: str) -> Path:
    """argparse ``type=`` of ``--out``: a file that can be written (not a folder, its parent a folder or creatable),
    checked while the command line is parsed, before the benchmark runs."""
    import argparse

    from rfkp.cli.paths import check_output_file

    try:
        return check_output_file(text, "--out")
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _portable(arg: str, repo: Path) -> str:
    path = Path(arg)
    if not path.is_absolute():
        return arg
    inside = path.resolve().is_relative_to(repo)
    return str(path.resolve().relative_to(repo)) if inside else f"<path>/{path.name}"


def portable_argv(argv: list[str]) -> list[str]:
    """The command line with absolute paths (also in ``--option=/path``) made relative to the repository, or,
    outside it, reduced to their last part (result files name no machine's folders)."""
    repo = Path(__file__).resolve().parents[1]
    out = []
    for arg in argv:
        option, sep, value = arg.partition("=")
        if sep and option.startswith("--"):
            out.append(f"{option}={_portable(value, repo)}")
        else:
            out.append(_portable(arg, repo))
    return out


def command_line(argv: list[str]) -> str:
    """``python`` + the portable argv, quoted so that it can be pasted into a shell."""
    return shlex.join(["python", *portable_argv(argv)])


def write_result(path: Path, what: str, results: dict[str, Any], *, argv: list[str] | None = None,
                 **extra: Any) -> None:
    """Write ``results`` with the device, versions, date and command. ``argv``: the command line (script first)
    when the script was called as a function, not from the shell (default ``sys.argv``)."""
    record = {
        "what": what,
        "results": results,
        "device": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(sys.argv if argv is None else argv),
        **extra,  # a script's own fields win (e.g. the GPU as device)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_strict(record, indent=1) + "\n")
