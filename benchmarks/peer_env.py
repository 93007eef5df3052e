"""The peer's Python (a virtualenv with `rfdetr`, ../shared/tools/peer_env.sh), checked before any work."""

from __future__ import annotations

import subprocess
from pathlib import Path


def peer_python_problem(python: str) -> str | None:
    """Why ``python`` cannot run the peer (missing, or `rfdetr` does not import), or None when it can."""
    if not Path(python).is_file():
        return f"{python} not found"
    check = subprocess.run([python, "-c", "import rfdetr"], capture_output=True, text=True, timeout=300)
    if check.returncode:
        lines = check.stderr.strip().splitlines()
        return f"{python} cannot import rfdetr: {lines[-1] if lines else f'exit status {check.returncode}'}"
    return None
