"""`rfkp serve`: render the model repository for some weights and run a real Triton Inference Server.

The server is the one bundled in the `nvidia-pytriton` wheel (default) or a `tritonserver` on PATH
(`--server system`, e.g. inside the NGC container). It listens on loopback unless `--host` says
otherwise, prints its endpoints once ready, and stops cleanly on SIGINT / SIGTERM / SIGHUP (a closed terminal).

On CPU the network runs on ONNX Runtime when it is installed (`--runtime auto`, the default; faster than
PyTorch eager): the raw-output graph is exported once per weights file and resolution and cached
($RFKP_CACHE_DIR/onnx, default ~/.cache/rfkp/onnx). `--runtime torch` serves the checkpoint on PyTorch.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rfkp.cli.arguments import (
    non_empty_path,
    non_negative_int,
    port,
    positive_float,
    positive_int,
    positive_int_list,
    probability,
    queue_delay_us,
)
from rfkp.devices import device_arg

if TYPE_CHECKING:
    from rfkp.serving.deploy import PreparedWeights
    from rfkp.serving.launcher import TritonServer
    from rfkp.serving.repository import ServingOptions


HEALTH_CHECK_S = 2.0  # how often the model processes are checked
# each stops the server cleanly (and removes a temporary run folder); SIGHUP: the terminal was closed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


_SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


def _stop_signals() -> tuple[signal.Signals, ...]:
    """The signals to handle: a signal already ignored stays ignored (``nohup rfkp serve`` ignores SIGHUP so
    that the server outlives the terminal)."""
    return tuple(s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN)


class _StopDuringStartup(BaseException):
    """SIGINT, SIGTERM or SIGHUP before the server is ready: unwinds the start (export, loading) at once."""


def _serve_device(text: str) -> str:
    """cpu, cuda or cuda:N (what the python-backend network can be told), checked against this machine."""
    name = device_arg(text)
    if name.startswith("cpu"):
        return "cpu"
    if not name.startswith("cuda"):
        raise argparse.ArgumentTypeError(f"rfkp serve runs the network on cpu, cuda or cuda:N, not {text!r}")
    return name


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model over gRPC/HTTP with Triton Inference Server", description=__doc__)
    p.add_argument("--weights", type=non_empty_path, help="rfkp or rfdetr keypoint checkpoint (default: the project's default model)")
    p.add_argument("--device", type=_serve_device, default="cpu", help="where the network runs: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind: IPv4, IPv6 (::1 or [::1]) or a host name (default 127.0.0.1, loopback only)")
    p.add_argument("--grpc-port", type=port, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    p.add_argument("--http-port", type=port, default=8000, help="HTTP port (default 8000; 0 picks a free one)")
    p.add_argument("--metrics-port", type=port, default=8002, help="metrics port (default 8002; 0: free one)")
    p.add_argument("--server", choices=("auto", "embedded", "system"), default="auto",
                   help="embedded: the nvidia-pytriton binary; system: tritonserver on PATH (default auto)")
    p.add_argument("--max-batch-size", type=positive_int, default=8, help="largest dynamic batch (default 8)")
    p.add_argument("--preferred-batch-sizes", type=positive_int_list, default=None,
                   help="comma-separated preferred batch sizes (default: half the max and the max)")
    p.add_argument("--max-queue-delay-us", type=queue_delay_us, default=2000,
                   help="longest wait to fill a batch, microseconds (default 2000)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request alone")
    p.add_argument("--threshold", type=probability, default=0.5, help="default score threshold (default 0.5)")
    p.add_argument("--max-detections", type=positive_int, default=100, help="output rows per image (default 100)")
    p.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="CPU network runtime: onnxruntime (the checkpoint's raw ONNX export, exported once and "
                        "cached), torch (eager), or auto: onnxruntime when installed, else torch (default auto; "
                        "on cuda the network runs on torch, or --engine)")
    p.add_argument("--num-threads", type=non_negative_int, default=0,
                   help="intra-op threads of the network, torch or ONNX Runtime (0: the runtime's default)")
    p.add_argument("--instances", type=positive_int, default=1, help="network instances (default 1)")
    p.add_argument("--engine", type=non_empty_path, help="TensorRT plan for rfkp_model (needs a tritonserver with the TensorRT backend, e.g. NGC's "
                        "container: --server system; refused with the embedded server)")
    p.add_argument("--run-dir", type=non_empty_path, help="folder for the rendered repository and logs (default: a temporary one, "
                                     "removed on exit unless the server failed)")
    p.add_argument("--ready-timeout", type=positive_float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(func=main)


def options_from_args(args: argparse.Namespace) -> ServingOptions:
    from rfkp.serving.repository import BatchingOptions, ServingOptions

    return ServingOptions(
        device=args.device,
        batching=BatchingOptions(
            enabled=not args.no_dynamic_batching,
            max_batch_size=args.max_batch_size,
            preferred_batch_sizes=args.preferred_batch_sizes,
            max_queue_delay_us=args.max_queue_delay_us,
        ),
        threshold=args.threshold,
        max_detections=args.max_detections,
        num_threads=args.num_threads,
        model_instances=args.instances,
        engine=Path(args.engine) if args.engine else None,
        runtime=args.runtime,
    )


def main(args: argparse.Namespace) -> int:
    from rfkp.serving.deploy import RANDOM_INIT_WARNING, launch
    from rfkp.serving.embedded import TritonNotFoundError
    from rfkp.serving.launcher import ServerStartError

    stop = threading.Event()
    state = {"ready": False, "interrupted": 0}

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        if state["ready"]:
            stop.set()
        elif not state["interrupted"]:  # the first one unwinds the start; later ones must not cut its clean-up
            state["interrupted"] = signum
            raise _StopDuringStartup

    temporary = not args.run_dir
    run_dir = Path(tempfile.mkdtemp(prefix="rfkp-serve-")) if temporary else Path(args.run_dir)
    previous = {s: signal.signal(s, _on_signal) for s in _stop_signals()}
    code, server = 1, None
    try:
        try:
            server, weights = launch(
                args.weights,
                options=options_from_args(args),
                run_dir=run_dir,
                host=args.host,
                grpc_port=args.grpc_port,
                http_port=args.http_port,
                metrics_port=args.metrics_port,
                server=args.server,
                ready_timeout=args.ready_timeout,
            )
            state["ready"] = True
        except (ServerStartError, TritonNotFoundError, RuntimeError, OSError, ValueError) as exc:
            print(f"rfkp serve: error: {exc}", file=sys.stderr)
            return code
        except _StopDuringStartup:
            if server is not None:  # the signal came just after launch returned
                server.stop()
            print("rfkp serve: interrupted while starting; stopped", file=sys.stderr)
            code = 128 + state["interrupted"]
            return code
        code = _run(server, weights, stop, RANDOM_INIT_WARNING)
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if temporary:
            if code == 0 or state["interrupted"] or not (run_dir / "server").exists():  # nothing worth keeping
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                print(f"rfkp serve: the repository and server log are kept in {run_dir}", file=sys.stderr)


def _run(server: TritonServer, weights: PreparedWeights, stop: threading.Event, random_warning: str) -> int:
    """Banner, then watch the server until a signal (0) or its failure (1); the server is stopped either way."""
    try:
        if weights.random_init:
            print(f"WARNING: {random_warning}", flush=True)
        print(f"rfkp server ready ({server.installation.kind} tritonserver, pid {server.pid})", flush=True)
        print(f"  network  {weights.runtime}", flush=True)
        print(f"  gRPC     {server.grpc_url}   (rfkp predict --url {server.grpc_url} IMAGE)", flush=True)
        print(f"  HTTP     http://{server.http_url}", flush=True)
        print(f"  metrics  {server.metrics_url}", flush=True)
        print(f"  repository {server.repository}; log {server.log_path}", flush=True)
        print(f"{', '.join(_SIGNAL_NAMES[s] for s in _stop_signals())} stops it.", flush=True)
        checked = time.monotonic()
        while not stop.wait(0.5):
            code = server.poll()
            if code is not None:
                print(f"tritonserver exited unexpectedly with code {code}:\n{server.failure_log()}", file=sys.stderr)
                return 1
            if time.monotonic() - checked > HEALTH_CHECK_S:
                checked = time.monotonic()
                dead = server.dead_model_processes()
                if dead:  # Triton would go on reporting ready while every request fails: stop, let a supervisor restart
                    print(f"rfkp serve: error: a model process died (out of memory?), its model can no longer "
                          f"answer; stopping. Gone: {'; '.join(dead)}", file=sys.stderr)  # fmt: skip
                    return 1
        print("stopping ...", flush=True)
    finally:
        code = server.stop()
    print(f"server stopped (exit code {code})", flush=True)
    return 0

