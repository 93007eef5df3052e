"""Weights -> rendered repository -> a ready Triton server (what ``rfkp serve`` does)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from rfkp.checkpoint import load_config_and_state
from rfkp.config import ModelConfig
from rfkp.serving.embedded import find_installation
from rfkp.serving.launcher import TritonServer
from rfkp.serving.repository import ServingOptions, render_repository

__all__ = ["PreparedWeights", "launch", "prepare_weights"]

RANDOM_INIT_WARNING = (
    "no trained checkpoint ships with rfkp yet: serving the default RANDOM-INITIALISED model; "
    "its detections are meaningless (pass --weights for a real checkpoint)"
)


@dataclass(frozen=True)
class PreparedWeights:
    """A checkpoint file the server loads, its configuration, and whether it is a random-init stand-in."""

    path: Path
    config: ModelConfig
    random_init: bool


def prepare_weights(weights: Path | str | None, run_dir: Path) -> PreparedWeights:
    """Read ``weights`` (rfkp or peer checkpoint) for its configuration; with None, write the project's
    default model: the bundled trained checkpoint, or (when the package ships without it) the random-initialised
    stand-in written to ``run_dir/weights/`` so every server process loads the very same tensors."""
    if weights is not None:
        path = Path(weights).resolve()
        config, _ = load_config_and_state(path)
        return PreparedWeights(path, config, random_init=False)
    from rfkp.api import RFDETRKeypoint, default_weights_path

    bundled = default_weights_path()
    if bundled is not None:
        config, _ = load_config_and_state(bundled)
        return PreparedWeights(bundled, config, random_init=False)
    model = RFDETRKeypoint.default(device="cpu")
    path = run_dir / "weights" / "default.pth"
    model.save_checkpoint(path)
    return PreparedWeights(path, model.config, random_init=model.is_random_init)


def launch(
    weights: Path | str | None = None,
    *,
    options: ServingOptions | None = None,
    run_dir: Path | str | None = None,
    host: str = "127.0.0.1",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    server: str = "auto",
    ready_timeout: float = 180.0,
    templates: Path | str | None = None,
) -> tuple[TritonServer, PreparedWeights]:
    """Render the repository into ``run_dir`` (default: a new temporary folder), start the server and
    wait until it is ready. The caller owns the returned server and must ``stop()`` it.

    Args:
        server: "auto" (the embedded ``nvidia-pytriton`` server, else ``tritonserver`` on PATH),
            "embedded" or "system".
        grpc_port, http_port, metrics_port: 0 picks free ports.

    Raises:
        ServerStartError: the server exited or was not ready within ``ready_timeout`` seconds.
    """
    installation = find_installation(server)
    run = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="rfkp-serve-"))
    run.mkdir(parents=True, exist_ok=True)
    prepared = prepare_weights(weights, run)
    repo = render_repository(
        run / "model_repository",
        config=prepared.config,
        weights=prepared.path,
        options=options,
        random_init=prepared.random_init,
        templates=templates,
    )
    triton = TritonServer(
        repo,
        installation=installation,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        workdir=run / "server",
    )
    triton.start()
    try:
        triton.wait_ready(ready_timeout)
    except BaseException:
        triton.stop()
        raise
    return triton, prepared
