"""Served throughput and latency: N simulated cameras stream frames over gRPC to a real Triton server.

Each camera is an asyncio task with its own gRPC client that sends one encoded frame per period
(``--fps``; 0 = flat out, the next frame as soon as the answer arrives; a late camera skips frames
like a real one). A run lasts ``--duration`` seconds or ``--requests`` requests per camera. Reported:
throughput, client-side p50/p95/p99 latency, errors, and the executed batch-size histogram of
``rfkp_model`` from Triton's statistics. Without ``--url`` the script starts its own embedded server
twice, with dynamic batching on and off, and also times in-process ``predict()`` on the same frame to
give the latency the server adds. Usage:
    python benchmarks/server.py [--variant nano|tiny|... | --weights CKPT] [--image IMG]
        [--cameras 8] [--fps 0] [--duration 20 | --requests N] [--batching both|on|off]
        [--url HOST:PORT] [--device cpu] [--runtime auto|torch|onnxruntime] [--out benchmarks/results/server_cpu.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from result_file import command_line, cpu_model, dumps_strict, portable_argv, result_path
from timing import times_ms

from rfkp.cli.arguments import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
    queue_delay_us,
)

REPO = Path(__file__).resolve().parents[1]
CPU = __import__("torch").device("cpu")
SAMPLE = REPO / "rfkp" / "assets" / "sample_mouse.png"


@dataclass
class CameraLog:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: int = 0


def _device_name(device: str) -> str:
    """The GPU's name for a CUDA run, else the CPU's model."""
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return cpu_model()


def versions() -> dict[str, str | None]:
    """Versions of the parts on the request path (None: not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("torch", "onnxruntime", "tritonclient", "nvidia-pytriton", "rfkp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.asarray(values) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def batch_histogram(stats: dict) -> dict[int, int]:
    model = stats["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in model.get("batch_stats", [])}


async def camera(url: str, frame: bytes, fps: float, stop_at: float, max_requests: int | None, log: CameraLog,
                 threshold: float) -> None:
    from rfkp.client import AsyncKeypointClient

    period = 1.0 / fps if fps > 0 else 0.0
    async with AsyncKeypointClient(url, timeout=120) as client:
        await client.metadata()
        next_at = time.perf_counter()
        sent = 0
        while time.perf_counter() < stop_at and (max_requests is None or sent < max_requests):
            if period:
                now = time.perf_counter()
                if now < next_at:
                    await asyncio.sleep(next_at - now)
                elif now - next_at > period:  # late: drop the frames a real camera would have lost
                    missed = int((now - next_at) / period)
                    log.skipped += missed
                    next_at += missed * period
                next_at += period
            t0 = time.perf_counter()
            try:
                await client.predict(frame, threshold=threshold)
                log.latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                log.errors.append(f"{type(exc).__name__}: {exc}")
            sent += 1


async def stream(url: str, frame: bytes, cameras: int, fps: float, duration: float, requests: int | None,
                 threshold: float) -> dict:
    from rfkp.client import AsyncKeypointClient

    async with AsyncKeypointClient(url) as probe:
        before = batch_histogram(await probe.statistics())
        logs = [CameraLog() for _ in range(cameras)]
        t0 = time.perf_counter()
        stop_at = t0 + (duration if requests is None else 1e9)
        await asyncio.gather(*(camera(url, frame, fps, stop_at, requests, log, threshold) for log in logs))
        wall = time.perf_counter() - t0
        after = batch_histogram(await probe.statistics())
    hist = {b: after.get(b, 0) - before.get(b, 0) for b in sorted(after)}
    hist = {b: n for b, n in hist.items() if n}
    done = sum(len(log.latencies) for log in logs)
    errors = [e for log in logs for e in log.errors]
    executions = sum(hist.values())
    return {
        "cameras": cameras,
        "target_fps_per_camera": fps or "flat out",
        "wall_s": wall,
        "requests_ok": done,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "skipped_frames": sum(log.skipped for log in logs),
        "throughput_rps": done / wall,
        "latency": percentiles([t for log in logs for t in log.latencies]),
        "batch_size_histogram": {str(b): n for b, n in hist.items()},
        "mean_executed_batch": (sum(b * n for b, n in hist.items()) / executions) if executions else None,
    }


def timed_runs(fn, runs: int, warmup: int = 3) -> dict:  # noqa: ANN001
    """Percentiles of ``runs`` timed calls after ``warmup`` untimed ones."""
    return {"runs": runs, **percentiles([t / 1e3 for t in times_ms(fn, CPU, runs, warmup)])}


def in_process_latency(weights: Path, frame: bytes, device: str, runs: int, threshold: float) -> dict:
    from rfkp.api import RFDETRKeypoint

    model = RFDETRKeypoint.from_checkpoint(weights, device=device)
    return timed_runs(lambda: model.predict(frame, threshold=threshold), runs)


def in_process_pipeline(weights: Path, graph: Path | None, frame: bytes, options, runs: int) -> dict:
    """The served pipeline (preprocess, the same network runner, postprocess) called in-process, no Triton: the
    served latency minus this is what the server and gRPC add."""
    from rfkp.api import RFDETRKeypoint
    from rfkp.serving.runtime import NetworkRunner, OnnxRuntimeRunner, Postprocessor, Preprocessor

    config = RFDETRKeypoint.from_checkpoint(weights, device="cpu").config
    pre = Preprocessor(config, max_pixels=options.max_pixels)
    if graph is not None:
        net = OnnxRuntimeRunner(graph, num_threads=options.num_threads)
    else:
        net = NetworkRunner(weights, device=options.device, num_threads=options.num_threads)
    post = Postprocessor(config, threshold=options.threshold, max_detections=options.max_detections)
    payload = np.array([[frame]], dtype=object)

    def once() -> None:
        pixels, sizes = pre(payload, None)
        post(net(pixels), sizes)

    return timed_runs(once, runs)


def make_weights(args: argparse.Namespace, folder: Path) -> tuple[Path, str]:
    if args.weights:
        return Path(args.weights), Path(args.weights).name
    from rfkp.api import RFDETRKeypoint
    from rfkp.variants import VARIANTS

    if args.variant == "default":
        model = RFDETRKeypoint.default(device="cpu")
    else:
        model = RFDETRKeypoint.from_config(VARIANTS[args.variant](), device="cpu")
    path = folder / f"{args.variant}.pth"
    model.save_checkpoint(path)
    origin = "random-initialised" if model.is_random_init or args.variant != "default" else "bundled trained weights"
    return path, f"{args.variant} ({origin}, {model.config.resolution} px)"


def served_run(args: argparse.Namespace, weights: Path, frame: bytes, batching: bool, folder: Path) -> dict:
    from rfkp.serving.deploy import launch
    from rfkp.serving.repository import BatchingOptions, ServingOptions

    options = ServingOptions(
        device=args.device,
        batching=BatchingOptions(enabled=batching, max_batch_size=args.max_batch_size,
                                 preferred_batch_sizes=(), max_queue_delay_us=args.max_queue_delay_us),
        num_threads=args.threads,
        threshold=args.threshold,
        runtime=args.runtime,
    )
    server, prepared = launch(weights, options=options, run_dir=folder / ("on" if batching else "off"),
                       grpc_port=0, http_port=0, metrics_port=0)
    try:
        single = asyncio.run(stream(server.grpc_url, frame, 1, 0, 0, args.single_requests, args.threshold))
        many = asyncio.run(stream(server.grpc_url, frame, args.cameras, args.fps, args.duration, args.requests,
                                  args.threshold))
        alive = server.poll() is None
    finally:
        server.stop()
    pipeline = in_process_pipeline(weights, prepared.runtime.graph, frame, options, args.single_requests)
    return {"dynamic_batching": batching, "network_runtime": prepared.runtime.name,
            "in_process_pipeline": pipeline, "single_camera_sequential": single, "cameras": many,
            "server_alive_after": alive}


def _url(text: str) -> str:
    from rfkp.client import check_url

    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", type=_url, help="benchmark a running server (HOST:PORT) instead of starting one")
    p.add_argument("--weights", help="checkpoint to serve (default: a random-initialised --variant)")
    p.add_argument("--variant", default="default", help="default (the project's default model), nano, tiny, ...")
    p.add_argument("--image", default=str(SAMPLE), help="frame to send (encoded bytes as read)")
    p.add_argument("--cameras", type=positive_int, default=8)
    p.add_argument("--fps", type=non_negative_float, default=0.0, help="per camera; 0 = flat out")
    p.add_argument("--duration", type=positive_float, default=20.0, help="seconds per run")
    p.add_argument("--requests", type=positive_int, help="requests per camera instead of --duration")
    p.add_argument("--single-requests", type=positive_int, default=30, help="sequential single-camera requests")
    p.add_argument("--batching", choices=("both", "on", "off"), default="both")
    p.add_argument("--max-batch-size", type=positive_int, default=8)
    p.add_argument("--max-queue-delay-us", type=queue_delay_us, default=5000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runtime", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="network runtime of the served model on CPU, as rfkp serve --runtime (default auto)")
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="threads of the served network (torch or ONNX Runtime) and of in-process predict (0: default)")
    p.add_argument("--threshold", type=probability, default=0.5)
    p.add_argument("--out", type=result_path, help="write the JSON result here")
    args = p.parse_args(argv)

    frame = Path(args.image).read_bytes()
    result: dict = {
        "what": "rfkp over gRPC to a real Triton server: N cameras streaming one encoded frame each",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
                    "cpu": cpu_model(), "load_average_at_start": os.getloadavg()},
        "device": _device_name(args.device),
        "versions": versions(),
        "command": command_line(["benchmarks/server.py", *(sys.argv[1:] if argv is None else list(argv))]),
        "image": {"path": portable_argv([str(Path(args.image).resolve())])[0], "bytes": len(frame)},
        "settings": {k: (portable_argv([str(Path(v).resolve())])[0] if k == "weights" and v else v)
                     for k, v in vars(args).items() if k not in ("out", "image")},
    }
    if args.url:
        result["runs"] = [asyncio.run(stream(args.url, frame, args.cameras, args.fps, args.duration, args.requests,
                                             args.threshold))]
    else:
        with tempfile.TemporaryDirectory(prefix="rfkp-bench-") as tmp:
            folder = Path(tmp)
            weights, label = make_weights(args, folder)
            result["model"] = label
            if args.threads > 0:
                import torch

                torch.set_num_threads(args.threads)
            result["in_process_predict"] = in_process_latency(weights, frame, args.device, args.single_requests,
                                                              args.threshold)
            modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]
            result["runs"] = [served_run(args, weights, frame, mode, folder) for mode in modes]
        summarise(result)
    text = dumps_strict(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


def summarise(result: dict) -> None:
    """Added latency (served single camera p50 - in-process predict() p50), the server's own overhead (served p50
    - the same pipeline called in-process p50) and the dynamic-batching gain."""
    local = result["in_process_predict"]["p50_ms"]
    summary = {}
    for run in result["runs"]:
        key = "batching_on" if run["dynamic_batching"] else "batching_off"
        served = run["single_camera_sequential"]["latency"]["p50_ms"]
        summary[f"{key}_added_latency_p50_ms"] = None if served is None else served - local
        pipeline = run["in_process_pipeline"]["p50_ms"]
        summary[f"{key}_server_overhead_p50_ms"] = None if served is None else served - pipeline
        summary[f"{key}_throughput_rps"] = run["cameras"]["throughput_rps"]
    if "batching_on_throughput_rps" in summary and "batching_off_throughput_rps" in summary:
        off = summary["batching_off_throughput_rps"]
        summary["dynamic_batching_throughput_gain"] = summary["batching_on_throughput_rps"] / off if off else None
    result["summary"] = summary


if __name__ == "__main__":
    sys.exit(main())
