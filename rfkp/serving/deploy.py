"""Weights -> (network runtime, raw ONNX export) -> rendered repository -> a ready Triton server (what
``rfkp serve`` does).

On CPU the network runs on ONNX Runtime when it can (``--runtime auto``, the default): it runs the portable
export faster than PyTorch eager (540 vs 703 ms at 576 px on 2 threads, benchmarks/results/
latency_cpu_predict.json). The raw-output graph is exported once per weights file and resolution into a
cache folder (``$RFKP_CACHE_DIR/onnx``, default ``$XDG_CACHE_HOME/rfkp/onnx`` or ``~/.cache/rfkp/onnx``), so
a restart reuses it, and hard-linked into the rendered repository.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rfkp.cache import cache_root
from rfkp.checkpoint import load_config_and_state
from rfkp.config import ModelConfig
from rfkp.serving import protocol as P
from rfkp.serving.embedded import TritonInstallation, TritonNotFoundError, find_installation
from rfkp.serving.launcher import (
    ServerStartError,
    TritonServer,
    check_ports,
    normalise_host,
    refuse_taken_ports,
)
from rfkp.serving.repository import ServingOptions, render_repository

__all__ = [
    "NetworkRuntime",
    "PreparedWeights",
    "choose_runtime",
    "graph_cache_dir",
    "launch",
    "prepare_raw_graph",
    "prepare_weights",
    "prune_graph_cache",
]

logger = logging.getLogger(__name__)


RANDOM_INIT_WARNING = (
    "this install lacks the bundled mouse checkpoint: serving the default RANDOM-INITIALISED model; "
    "its detections are meaningless (pass --weights for a real checkpoint)"
)


@dataclass(frozen=True)
class NetworkRuntime:
    """What runs ``rfkp_model``: "torch", "onnxruntime" or "tensorrt_plan", why, and the served ONNX graph."""

    name: str
    reason: str
    graph: Path | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@dataclass(frozen=True)
class PreparedWeights:
    """A checkpoint file the server loads, its configuration, and whether it is a random-init stand-in;
    after ``launch``, also the network runtime it was served with."""

    path: Path
    config: ModelConfig
    random_init: bool
    runtime: NetworkRuntime | None = None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_runtime(options: ServingOptions) -> NetworkRuntime:
    """The runtime of ``rfkp_model`` for these options, and why (``graph`` is not set here).

    An engine is the runtime when given; on CUDA the network runs on torch; on CPU "auto" takes ONNX Runtime
    when ``onnxruntime`` (and ``onnx``, to export the graph) are importable, else torch.

    Raises:
        RuntimeError: "onnxruntime" asked for explicitly but it (or ``onnx``) is not installed.
    """
    if options.engine is not None:
        return NetworkRuntime(P.RUNTIME_TENSORRT, f"the TensorRT engine {options.engine}")
    if options.runtime == P.RUNTIME_TORCH:
        return NetworkRuntime(P.RUNTIME_TORCH, "asked for (--runtime torch)")
    if options.device != "cpu":
        return NetworkRuntime(P.RUNTIME_TORCH, f"device {options.device}: ONNX Runtime is used on CPU only")
    missing = [m for m in ("onnxruntime", "onnx") if not _importable(m)]
    if options.runtime == P.RUNTIME_ONNXRUNTIME:
        if missing:
            raise RuntimeError(
                f"--runtime onnxruntime needs the {' and '.join(missing)} package(s): pip install onnx onnxruntime "
                "(or pip install -e '.[export]'), or serve with --runtime torch"
            )
        return NetworkRuntime(P.RUNTIME_ONNXRUNTIME, "asked for (--runtime onnxruntime)")
    if missing:
        return NetworkRuntime(
            P.RUNTIME_TORCH, f"auto: {' and '.join(missing)} not installed (pip install -e '.[export]' for ONNX Runtime)"
        )
    return NetworkRuntime(
        P.RUNTIME_ONNXRUNTIME,
        "auto: onnxruntime is installed and runs the network faster than PyTorch eager on CPU",
    )


def graph_cache_dir() -> Path:
    """Where raw-output graphs are cached: ``cache_root()/onnx``."""
    return cache_root() / "onnx"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# the rfkp sources a raw graph cannot depend on; every other module counts (loading, the network, the export,
# and the serving protocol and metadata the export embeds)
_NOT_GRAPH_SOURCES = ("cli",)
_GRAPH_NAME = re.compile(r"raw-[0-9a-f]{32}-r[0-9]+\.onnx")
# unfinished exports: export_onnx's .NAME.PID.tmp, and the .PID.partial.onnx of earlier rfkp versions
_PARTIAL_NAME = re.compile(r"(\.raw-[0-9a-f]{32}-r[0-9]+\.onnx\.[0-9]+\.tmp|raw-[0-9a-f]{32}-r[0-9]+\.[0-9]+\.partial\.onnx)")
# graphs of earlier rfkp versions, keyed without the code fingerprint: never reused, so always pruned
_LEGACY_NAME = re.compile(r"raw-v1-[0-9a-f]+-r[0-9]+\.onnx")
# the cache keeps the graphs used most recently: at most this many, none unused for longer than this
MAX_CACHED_GRAPHS = 8
MAX_GRAPH_AGE_S = 30 * 24 * 3600.0
_PARTIAL_AGE_S = 3600.0  # an unfinished export older than this was left by a crash


def graph_code_fingerprint() -> str:
    """SHA-256 over the rfkp sources a raw graph may be traced from (all but the CLI: a stale cache entry costs
    more than a needless export) and the torch version."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"torch {torch_version()}".encode())
    for source in sorted(root.rglob("*.py")):
        relative = source.relative_to(root)
        if relative.parts[0] in _NOT_GRAPH_SOURCES:
            continue
        digest.update(str(relative).encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def prune_graph_cache(
    folder: Path | str, *, keep: int = MAX_CACHED_GRAPHS, max_age_s: float = MAX_GRAPH_AGE_S, now: float | None = None
) -> list[Path]:
    """Delete cached graphs beyond the `keep` most recently used and those unused for `max_age_s`, and
    unfinished exports a crash left behind. A graph is "used" when exported or reused (its mtime). Servers
    already running keep theirs: the repository holds a hard link or a copy. Returns the deleted files."""
    import time

    folder = Path(folder)
    now = time.time() if now is None else now
    removed: list[Path] = []

    def unlink(path: Path) -> None:
        try:
            path.unlink()
            removed.append(path)
        except OSError as exc:  # pruned by another server start first, or another user's file in a shared cache
            logger.debug("could not prune %s: %s", path, exc)

    graphs, partial = [], []
    for path in [*folder.glob("raw-*.onnx"), *folder.glob(".raw-*.tmp")]:
        if _LEGACY_NAME.fullmatch(path.name):
            unlink(path)
            continue
        kind = graphs if _GRAPH_NAME.fullmatch(path.name) else partial if _PARTIAL_NAME.fullmatch(path.name) else None
        if kind is None:  # not one of ours
            continue
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        kind.append((mtime, path))
    for mtime, path in partial:
        if now - mtime > _PARTIAL_AGE_S:
            unlink(path)
    graphs.sort(reverse=True)
    for rank, (mtime, path) in enumerate(graphs):
        if rank >= keep or now - mtime > max_age_s:
            unlink(path)
    if removed:
        logger.info("pruned %d cached graph file(s) from %s", len(removed), folder)
    return removed


def torch_version() -> str:
    import torch

    return torch.__version__


def prepare_raw_graph(
    prepared: PreparedWeights, *, max_batch: int, cache_dir: Path | str | None = None
) -> tuple[Path, bool]:
    """The raw-output ONNX export of ``prepared`` (portable, the model's resolution, dynamic batch), exported
    on first use and cached by the weights file's SHA-256, the resolution and ``graph_code_fingerprint()`` (so
    an rfkp or torch upgrade never reuses a graph traced from older code). A new export prunes the cache
    (``prune_graph_cache``).

    The batch axis is symbolic: ONNX Runtime runs any batch, so a cached graph serves every max batch size
    (`max_batch` is only recorded in the metadata of a new export, raised to at least 2 so that the export
    traces a batch of 2 and the cached graph is never specialised to batch 1).

    Returns:
        (the graph, whether it was exported now).
    """
    from rfkp.api import RFDETRKeypoint
    from rfkp.export import RAW, export_onnx

    folder = Path(cache_dir) if cache_dir is not None else graph_cache_dir()
    resolution = prepared.config.resolution
    key = hashlib.sha256(f"{_file_sha256(prepared.path)} {graph_code_fingerprint()}".encode()).hexdigest()[:32]
    path = folder / f"raw-{key}-r{resolution}.onnx"
    if path.is_file():
        if not _readable_graph(path):
            logger.warning("the cached graph %s is unreadable (a crash while it was written?): exporting it again", path)
            path.unlink(missing_ok=True)
        elif _mark_used(path):
            logger.info("reusing the raw ONNX export %s of %s", path, prepared.path)
            return path, False
    logger.info("exporting %s to a raw-output ONNX graph (%d px, dynamic batch) in %s", prepared.path, resolution, path)
    folder.mkdir(parents=True, exist_ok=True)
    model = RFDETRKeypoint.from_checkpoint(prepared.path, device="cpu")
    # export_onnx writes beside the path and renames: a concurrent start sees the whole graph or none
    export_onnx(model, path, resolution=resolution, dynamic_batch=max(2, max_batch), outputs=RAW)
    prune_graph_cache(folder)
    return path, True


def _mark_used(path: Path) -> bool:
    """Touch a cached graph (pruning keeps the graphs used most recently); False when it is gone (pruned by
    another server start meanwhile). A cache this user may only read is used as it is."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.debug("cannot mark %s as used: %s", path, exc)
    return True


def _readable_graph(path: Path) -> bool:
    """Whether a cached graph parses (a truncated file would make every server start fail)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure means: export again
        return False
    return True


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


RUN_STAMP = ".rfkp-serve"  # in a run folder: the pid of the launch that rendered it, locked while it runs
_RUN_LOCKS: dict[Path, IO[str]] = {}  # run folder -> the open, flock-ed stamp of this process's launch there


def _claim_run_dir(run: Path) -> None:
    """Make ``run`` this launch's run folder. A folder an earlier ``rfkp serve`` rendered is cleared and reused
    once that launch's process has ended, so a supervisor can restart with the same ``--run-dir``; a folder in
    use by a live launch, or holding a repository rfkp did not render, is refused. A launch holds an exclusive
    ``flock`` on the stamp for as long as its process lives: the kernel drops it when the process ends, so a
    stale stamp is told from a live one also when its pid has been reused (pid 1 after a container restart).

    Raises:
        NotADirectoryError: ``run`` is a file. FileExistsError: the folder is in use or not ours.
    """
    import fcntl

    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"--run-dir {run} is a file, not a folder")
    held = _RUN_LOCKS.pop(run, None)
    if held is not None:  # this process launched here before: that server was stopped or is being replaced
        held.close()
    stamp = run / RUN_STAMP
    repo = run / "model_repository"
    rendered = repo.is_dir() and any(repo.iterdir())
    if rendered and not stamp.is_file():
        raise FileExistsError(f"{run} already holds a rendered repository: give an empty or new --run-dir")
    run.mkdir(parents=True, exist_ok=True)
    handle = open(stamp, "a+")  # noqa: SIM115 - held open while this process lives
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise FileExistsError(f"{run} is the run folder of a server that is still running (pid {owner})") from None
    if rendered:
        handle.seek(0)
        logger.info("reusing the run folder %s of an earlier rfkp serve (pid %s)", run, handle.read().strip() or "?")
        for part in ("model_repository", "server"):
            shutil.rmtree(run / part, ignore_errors=True)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _RUN_LOCKS[run] = handle


def _remove_run_dir(run: Path) -> None:
    """Release this process's claim on a run folder (``_claim_run_dir``) and delete the folder."""
    held = _RUN_LOCKS.pop(run, None)
    if held is not None:
        held.close()
    shutil.rmtree(run, ignore_errors=True)


def _installation_for(server: str, engine: Path | None) -> TritonInstallation:
    """The server to run. A TensorRT engine needs a ``tritonserver`` with the TensorRT backend: "auto" then takes
    the one on PATH first, and the embedded server (python backend only) is refused.

    Raises:
        ValueError: an engine with the embedded server. TritonNotFoundError: no server of the asked kind.
    """
    if engine is not None and server == "auto":
        try:
            return find_installation("system")
        except TritonNotFoundError:
            pass
    installation = find_installation(server)
    if engine is not None and installation.kind == "embedded":
        raise ValueError(
            f"--engine {engine} needs a tritonserver with the TensorRT backend (for example in NGC's tritonserver "
            "container, with --server system); the embedded server has the python backend only"
        )
    return installation


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
    cache_dir: Path | str | None = None,
    keep_run_dir: bool = False,
) -> tuple[TritonServer, PreparedWeights]:
    """Choose the network runtime (``choose_runtime``; logged), export the raw ONNX graph when it is ONNX
    Runtime (``prepare_raw_graph``), render the repository into ``run_dir`` (default: a new temporary
    folder), start the server and wait until it is ready. The caller owns the returned server and must
    ``stop()`` it; the returned weights carry the runtime (``runtime``). A temporary run folder is removed by
    ``stop()``, or when the start fails before the server runs, unless ``keep_run_dir``; after a
    ``ServerStartError`` it stays for the server log the error names; a given ``run_dir`` is always kept.

    Args:
        server: "auto" (the embedded ``nvidia-pytriton`` server, else ``tritonserver`` on PATH; with an engine,
            the one on PATH first), "embedded" or "system". A system server's python backend must be able to
            import onnxruntime for the ONNX Runtime runtime (or pass ``ServingOptions(runtime="torch")``). An
            engine (``options.engine``) with the embedded server is refused (ValueError) before anything starts.
        grpc_port, http_port, metrics_port: 0 picks free ports.
        cache_dir: folder of cached raw ONNX graphs (default: ``graph_cache_dir()``).
        keep_run_dir: keep the temporary run folder (without ``run_dir``) after ``stop()`` or a failed start.

    Raises:
        ServerStartError: the server exited or was not ready within ``ready_timeout`` seconds.
    """
    host = normalise_host(host)
    check_ports(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)  # before any bind test
    options = options or ServingOptions()
    installation = _installation_for(server, options.engine)  # before the run folder is made
    run = (Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="rfkp-serve-"))).resolve()
    temporary = run_dir is None and not keep_run_dir
    try:
        triton, prepared = _launch_in(
            run, weights, options, installation, host, (grpc_port, http_port, metrics_port), ready_timeout,
            templates, cache_dir,
        )  # fmt: skip
    except ServerStartError:  # the server ran and failed: its log, which the error names, stays
        raise
    except BaseException:
        if temporary:
            _remove_run_dir(run)
        raise
    if temporary:
        triton.call_after_stop(lambda: _remove_run_dir(run))
    return triton, prepared


def _launch_in(
    run: Path,
    weights: Path | str | None,
    options: ServingOptions,
    installation: TritonInstallation,
    host: str,
    ports: tuple[int, int, int],
    ready_timeout: float,
    templates: Path | str | None,
    cache_dir: Path | str | None,
) -> tuple[TritonServer, PreparedWeights]:
    """``launch`` in the run folder ``run``: claim it, export, render, start and wait (see ``launch``)."""
    grpc_port, http_port, metrics_port = ports
    _claim_run_dir(run)  # before the graph export (render_repository would refuse a used folder only after it)
    # also before the export; TritonServer.start checks again, for ports taken meanwhile
    refuse_taken_ports(host, gRPC=grpc_port, HTTP=http_port, metrics=metrics_port)
    prepared = prepare_weights(weights, run)
    runtime = choose_runtime(options)
    if runtime.name == P.RUNTIME_ONNXRUNTIME:
        graph, exported = prepare_raw_graph(prepared, max_batch=options.batching.max_batch_size, cache_dir=cache_dir)
        how = "exported now" if exported else "cached"
        runtime = dataclasses.replace(runtime, reason=f"{runtime.reason}; graph {how}: {graph}", graph=graph)
    logger.info("rfkp_model runtime: %s", runtime)
    prepared = dataclasses.replace(prepared, runtime=runtime)
    repo = render_repository(
        run / "model_repository",
        config=prepared.config,
        weights=prepared.path,
        options=options,
        random_init=prepared.random_init,
        templates=templates,
        network_graph=runtime.graph,
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
    try:
        triton.start()  # inside: an interrupt right after the process is spawned must stop it too
        triton.wait_ready(ready_timeout)
    except BaseException:
        triton.stop()
        raise
    return triton, prepared
