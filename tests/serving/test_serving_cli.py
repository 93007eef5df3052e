"""`rfkp serve` as users run it: from a virtual environment, default weights, SIGTERM / SIGINT stop it."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")

import argparse
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import torch
from serving_helpers import REPO, encode, noise_image, require_triton

from rfkp.api import default_weights_path
from rfkp.cli.main import build_parser
from rfkp.cli.serve import add_parser, options_from_args
from rfkp.client import KeypointClient, RemoteError
from rfkp.serving.launcher import free_port

READY_LINE = "stops it"  # the last line of the banner


class OutputReader:
    """Collects a process's stdout lines in a thread, so waiting never blocks on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line)

    def until(self, marker: str, timeout: float) -> str:
        """All output up to the first line containing ``marker`` (fails with what was read)."""
        deadline, start = time.monotonic() + timeout, len(self.seen)
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if marker in line:
                return "".join(self.seen[start:])
        raise AssertionError(f"{marker!r} not printed within {timeout} s; output:\n{''.join(self.seen)}")


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv over this interpreter's packages: its bin/python3 is what the stub must use."""
    root = tmp_path_factory.mktemp("venv") / ".venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(root)
    return root / "bin" / "python"


def test_parser_defaults_listen_on_loopback() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-batch-size", "6"])
    assert args.host == "127.0.0.1" and (args.grpc_port, args.http_port) == (8001, 8000)
    options = options_from_args(args)
    assert options.batching.preferred_batch_sizes == (3, 6) and options.batching.enabled
    args = parser.parse_args(["serve", "--preferred-batch-sizes", "2,4", "--no-dynamic-batching"])
    options = options_from_args(args)
    assert options.batching.preferred_batch_sizes == (2, 4) and not options.batching.enabled
    for bad in ("two", "0,4", "-4"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--preferred-batch-sizes", bad])
    for option in ("--run-dir", "--engine"):  # an unset variable: not "a temporary folder" or "no engine"
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", option, ""])


def test_runtime_option() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert options_from_args(parser.parse_args(["serve"])).runtime == "auto"
    for runtime in ("torch", "onnxruntime"):
        assert options_from_args(parser.parse_args(["serve", "--runtime", runtime])).runtime == runtime
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--runtime", "tensorflow"])
    assert parser.parse_args(["serve", "--device", "CPU:0"]).device == "cpu"  # torch's name, as the backends compare
    args = parser.parse_args(["serve", "--runtime", "onnxruntime"])
    args.device = "cuda"  # as parsed on a GPU machine
    with pytest.raises(ValueError, match="CPU only"):
        options_from_args(args)
    if not torch.cuda.is_available():  # a device this machine lacks is refused while parsing
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--device", "cuda"])


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_from_venv_default_weights(venv_python: Path, tmp_path: Path, stop_signal: int) -> None:
    require_triton()
    grpc_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env["PATH"] = "/usr/bin:/bin"  # no other python first on PATH: the launcher must put the venv's there
    cmd = [str(venv_python), "-m", "rfkp.cli.main", "serve", "--grpc-port", str(grpc_port), "--http-port", "0",
           "--metrics-port", "0", "--run-dir", str(tmp_path / "run"), "--ready-timeout", "90"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = OutputReader(proc)
        banner = output.until(READY_LINE, timeout=120)
        trained_default = default_weights_path() is not None
        assert ("RANDOM-INITIALISED" in banner) is not trained_default
        assert f"127.0.0.1:{grpc_port}" in banner
        with_ort = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx"))
        assert ("network  onnxruntime (auto: " if with_ort else "network  torch (auto: ") in banner  # --runtime auto
        image = tmp_path / "frame.png"
        image.write_bytes(encode(noise_image(90, 120, seed=7)))
        with KeypointClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.metadata.random_init is not trained_default
            dets = client.predict(image, threshold=0.0)
        assert dets.image_size == (90, 120) and len(dets) > 0
        args = build_parser().parse_args(["predict", "--url", f"127.0.0.1:{grpc_port}", str(image),
                                          str(tmp_path / "missing.png"), "--threshold", "0", "--out",
                                          str(tmp_path / "out")])  # fmt: skip
        assert args.func(args) == 1  # one image missing
        saved = json.loads((tmp_path / "out" / "detections.json").read_text())
        assert list(saved) == [str(image)] and len(saved[str(image)]["score"]) == len(dets)
        assert list(json.loads((tmp_path / "out" / "errors.json").read_text())) == [str(tmp_path / "missing.png")]
        assert (tmp_path / "out" / "frame_keypoints.png").is_file()
        proc.send_signal(stop_signal)
        tail = output.until("server stopped", timeout=60)
        assert proc.wait(timeout=30) == 0, tail
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(RemoteError, match="UNAVAILABLE"):  # nothing listens any more
        with KeypointClient(f"127.0.0.1:{grpc_port}", timeout=5) as client:
            client.metadata  # noqa: B018


def test_cli_reports_bad_weights(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "rfkp.cli.main", "serve", "--weights", str(bad), "--grpc-port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "cannot read checkpoint" in result.stderr


def test_cli_refuses_a_used_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "model_repository").mkdir(parents=True)  # what an earlier `rfkp serve --run-dir` leaves
    (run_dir / "model_repository" / "keep.txt").write_text("earlier run")
    result = subprocess.run(
        [sys.executable, "-m", "rfkp.cli.main", "serve", "--run-dir", str(run_dir), "--grpc-port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "already holds a rendered repository: give an empty or new --run-dir" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "model_repository" / "keep.txt").read_text() == "earlier run"


def _serve(weights: Path, *extra: str, tmpdir: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "rfkp.cli.main", "serve", "--weights", str(weights), "--grpc-port", "0",
           "--http-port", "0", "--metrics-port", "0", "--runtime", "torch", *extra]  # fmt: skip
    env = None if tmpdir is None else {**os.environ, "TMPDIR": str(tmpdir)}  # where the temporary run folder goes
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)  # fmt: skip


def test_a_dead_model_process_stops_the_server_and_startup_can_be_interrupted(tmp_path: Path) -> None:
    """Triton goes on reporting ready when a model process dies (e.g. the out-of-memory killer), while every
    request fails: rfkp serve notices and exits non-zero, so that a supervisor can restart it. A Ctrl-C while
    starting stops at once."""
    require_triton()
    from rfkp import RFDETRKeypoint
    from rfkp.serving.launcher import _children
    from rfkp.variants import tiny

    weights = tmp_path / "tiny.pt"
    RFDETRKeypoint.from_config(tiny(num_keypoints_per_class=[3]), device="cpu").save_checkpoint(weights)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _serve(weights, tmpdir=tmp)  # a temporary run folder: kept after a failure, and named
    try:
        output = OutputReader(proc)
        output.until(READY_LINE, timeout=120)
        (server_pid,) = [pid for pid, (_, cmd) in _children(proc.pid).items() if "tritonserver" in cmd and "--help" not in cmd]
        stubs = [pid for pid, (_, cmd) in _children(server_pid).items() if "rfkp_preprocess" in cmd]
        os.kill(stubs[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        time.sleep(0.5)  # the reader thread takes the last lines
        text = "".join(output.seen) + "".join(output.lines.get_nowait() for _ in range(output.lines.qsize()))
        assert "a model process died" in text and "rfkp_preprocess" in text
        assert not Path(f"/proc/{server_pid}").exists()
        kept = Path(text.split("are kept in ")[1].split()[0])
        assert kept.parent == tmp and (kept / "server" / "tritonserver.log").is_file()  # for the post-mortem
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc = _serve(weights, "--run-dir", str(kept))  # a supervisor's restart in the same run folder
    try:
        OutputReader(proc).until(READY_LINE, timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc = _serve(weights, tmpdir=tmp)
    try:
        deadline = time.monotonic() + 60
        def servers() -> list[int]:
            return [pid for pid, (_, cmd) in _children(proc.pid).items() if "--model-repository" in cmd]

        while not servers() and time.monotonic() < deadline:  # tritonserver started, still loading
            time.sleep(0.02)
        started = servers()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert "interrupted while starting" in out and "server ready" not in out
        # rfkp serve stopped and reaped tritonserver itself before exiting (the parent-death signal would only
        # end it later, with init reaping it)
        assert started and not any(Path(f"/proc/{pid}").exists() for pid in started)
        assert [p for p in tmp.iterdir() if p != kept] == []  # the interrupted start's temporary folder is gone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sighup_stops_the_server_and_removes_its_temporary_run_folder(tmp_path: Path, tiny_weights: Path) -> None:
    """A closed terminal sends SIGHUP: handled like SIGTERM, not the default exit that leaks the run folder."""
    require_triton()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _serve(tiny_weights, tmpdir=tmp)
    try:
        output = OutputReader(proc)
        banner = output.until(READY_LINE, timeout=120)
        assert [p.name[:11] for p in tmp.iterdir()] == ["rfkp-serve-"]
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
        assert "server stopped" in output.until("server stopped", timeout=10)
        assert list(tmp.iterdir()) == []
        assert "SIGHUP stops it" in banner
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_an_ignored_sighup_stays_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nohup rfkp serve` ignores SIGHUP so the server outlives the terminal: serve must not take it over."""
    from rfkp.cli import serve

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert signal.SIGHUP not in serve._stop_signals()
        assert set(serve._stop_signals()) == {signal.SIGINT, signal.SIGTERM}
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert signal.SIGHUP in serve._stop_signals()
    finally:
        signal.signal(signal.SIGHUP, previous)
