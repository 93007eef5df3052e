"""The peer's Python (a virtualenv with `rfdetr`, ../shared/tools/peer_env.sh), checked before any work."""

from __future__ import annotations

import shutil
import subprocess


def peer_python_problem(python: str) -> str | None:
    """Why ``python`` cannot run the peer (missing, or `rfdetr` does not import), or None when it can."""
    if shutil.which(python) is None:  # a path, or a name on PATH (python3)
        return f"{python} not found (neither a file nor a command on PATH)"
    check = subprocess.run([python, "-c", "import rfdetr"], capture_output=True, text=True, timeout=300)
    if check.returncode:
        lines = check.stderr.strip().splitlines()
        return f"{python} cannot import rfdetr: {lines[-1] if lines else f'exit status {check.returncode}'}"
    return None
