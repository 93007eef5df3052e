"""How soon a client reaches a restarted server: rfkp's client (reconnect backoff capped) against a plain
tritonclient gRPC client (gRPC's default backoff), side by side in one run.

A real embedded server is started, both clients poll it (``is_ready`` every ``--poll`` seconds), the server is
stopped for ``--outage`` seconds and started again on the same ports, ``--repeats`` times; reported per client
and outage: the seconds from the new server's readiness to the client's first successful call (and their
median and maximum). Usage:
    python benchmarks/client_reconnect.py [--outage 60] [--repeats 3] [--poll 0.1]
        [--out benchmarks/results/client_reconnect_cpu.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from result_file import result_path, write_result

from rfkp.cli.arguments import positive_float, positive_int


def _poll(name: str, ready: object, stop: threading.Event, poll: float, log: dict[str, list[float]]) -> None:
    """Record the times of successful calls of ``ready()`` (a bool-returning health check)."""
    while not stop.is_set():
        try:
            if ready():
                log[name].append(time.monotonic())
        except Exception:  # noqa: BLE001 - a failed call is what is being measured
            pass
        time.sleep(poll)


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("grpcio", "tritonclient", "nvidia-pytriton", "rfkp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _summary(delays: list[float | None]) -> dict[str, float | int | None]:
    done = sorted(d for d in delays if d is not None)
    return {"median_s": statistics.median(done) if done else None, "max_s": done[-1] if done else None,
            "missed": len(delays) - len(done)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--outage", type=positive_float, default=60.0, help="seconds the server stays down (default 60)")
    p.add_argument("--repeats", type=positive_int, default=3, help="outages, one after the other (default 3)")
    p.add_argument("--poll", type=positive_float, default=0.1, help="seconds between a client's calls (default 0.1)")
    p.add_argument("--wait", type=positive_float, default=120.0,
                   help="seconds to wait after each restart for both clients (default 120)")
    p.add_argument("--out", type=result_path)
    args = p.parse_args(argv)

    import tritonclient.grpc as grpcclient

    from rfkp.client import RECONNECT_BACKOFF_MS, KeypointClient
    from rfkp.serving.deploy import launch
    from rfkp.serving.launcher import free_port

    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    root = Path(tempfile.mkdtemp(prefix="rfkp-reconnect-"))
    server, _ = launch(None, run_dir=root / "run0", **ports)
    url = server.grpc_url
    rfkp_client = KeypointClient(url, timeout=2.0)
    plain = grpcclient.InferenceServerClient(url)  # tritonclient's default channel: gRPC's default backoff
    log: dict[str, list[float]] = {"rfkp": [], "tritonclient_default": []}
    stop = threading.Event()
    checks = {"rfkp": rfkp_client.is_ready,
              "tritonclient_default": lambda: plain.is_server_ready(client_timeout=2.0)}  # fmt: skip
    threads = [threading.Thread(target=_poll, args=(n, f, stop, args.poll, log), daemon=True)
               for n, f in checks.items()]  # fmt: skip
    delays: dict[str, list[float | None]] = {name: [] for name in log}
    try:
        for t in threads:
            t.start()
        time.sleep(3.0)
        if not all(log.values()):
            print("client_reconnect.py: a client never reached the first server", file=sys.stderr)
            return 1
        for i in range(1, args.repeats + 1):
            server.stop()
            time.sleep(args.outage)
            server, _ = launch(None, run_dir=root / f"run{i}", **ports)
            ready_at = time.monotonic()
            deadline = ready_at + args.wait
            while time.monotonic() < deadline and not all(any(t > ready_at for t in v) for v in log.values()):
                time.sleep(0.1)
            for name, times in log.items():
                delays[name].append(next((t - ready_at for t in times if t > ready_at), None))
            print(f"outage {i}: " + ", ".join(
                f"{name} {d:.2f} s" if (d := delays[name][-1]) is not None else f"{name} not within {args.wait:g} s"
                for name in delays))  # fmt: skip
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        server.stop()
        rfkp_client.close()
        plain.close()
        shutil.rmtree(root, ignore_errors=True)  # the rendered repositories and server logs
    summaries = {name: _summary(values) for name, values in delays.items()}
    for name, summary in summaries.items():
        median = summary["median_s"]
        shown = f"median {median:.2f} s, max {summary['max_s']:.2f} s" if median is not None else "never"
        print(f"{name:22s} first success after a restarted server was ready: {shown} ({summary['missed']} missed)")
    if args.out:
        write_result(args.out, "seconds from a restarted server's readiness to a client's first successful call",
                     {"outage_s": args.outage, "repeats": args.repeats, "poll_s": args.poll, "wait_s": args.wait,
                      "rfkp_max_reconnect_backoff_ms": RECONNECT_BACKOFF_MS,
                      "first_success_after_ready_s": delays, "summary": summaries},
                     argv=[__file__, *argv], versions=_versions())  # fmt: skip
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
