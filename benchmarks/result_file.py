"""One writer for benchmark result files: the results plus device, versions, date and the command."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def portable_argv(argv: list[str]) -> list[str]:
    """The command line with absolute paths made relative to the repository, or, outside it, reduced to their
    last part (result files name no machine's folders)."""
    repo = Path(__file__).resolve().parents[1]
    out = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute():
            inside = path.resolve().is_relative_to(repo)
            arg = str(path.resolve().relative_to(repo)) if inside else f"<path>/{path.name}"
        out.append(arg)
    return out


def write_result(path: Path, what: str, results: dict[str, Any], *, argv: list[str] | None = None,
                 **extra: Any) -> None:
    """Write ``results`` with the device, versions, date and command. ``argv``: the command line (script first)
    when the script was called as a function, not from the shell (default ``sys.argv``)."""
    record = {
        "what": what,
        "results": results,
        **extra,
        "device": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *portable_argv(sys.argv if argv is None else argv)]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
