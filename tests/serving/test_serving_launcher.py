"""Launching the real tritonserver binary: environment, readiness timeout, failures, clean stop."""

from __future__ import annotations

import pytest

pytest.importorskip("tritonclient.grpc", reason="serving tests need the 'serving' extra (tritonclient[grpc])")

import os
import re
import sys
import time
from pathlib import Path

from serving_helpers import require_triton

from rfkp.serving.embedded import (
    TritonInstallation,
    TritonNotFoundError,
    embedded_installation,
    find_installation,
)
from rfkp.serving.launcher import (
    ServerStartError,
    TritonServer,
    free_port,
    normalise_host,
    port_in_use,
    url_host,
)

ECHO_MODEL = '''
import time
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep({init_sleep})

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")]) for r in requests]
'''
ECHO_CONFIG = """
name: "echo"
backend: "python"
max_batch_size: 4
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }} ]
output [ {{ name: "X" data_type: TYPE_FP32 dims: [ {out_dims} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def echo_repository(root: Path, init_sleep: float = 0.0, out_dims: str = "2") -> Path:
    model = root / "repo" / "echo"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(ECHO_MODEL.format(init_sleep=init_sleep))
    (model / "config.pbtxt").write_text(ECHO_CONFIG.format(out_dims=out_dims))
    return root / "repo"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_embedded_environment() -> None:
    try:
        inst = embedded_installation()
    except TritonNotFoundError as exc:
        pytest.skip(str(exc))
    env = inst.environment({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/x"})
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[-1] == "/opt/x"
    assert any(Path(p, "libpython3.11.so").exists() or list(Path(p).glob("libpython3*.so*")) for p in libs)
    assert any(p.endswith("nvidia_pytriton.libs") for p in libs)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert set(inst.backend_sources) == {"python"}
    names = {p.name for p in inst.backend_sources["python"]}
    assert names == {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"}


def test_find_installation_rejects_unknown_choice() -> None:
    with pytest.raises(ValueError, match="prefer must be"):
        find_installation("docker")


def test_system_installation_needs_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TritonNotFoundError, match="no 'tritonserver' on PATH"):
        find_installation("system")


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a Triton model repository"):
        TritonServer(tmp_path, installation=TritonInstallation(binary=Path("/bin/true"), kind="system"))


def test_start_serve_stop(tmp_path: Path) -> None:
    require_triton()
    import numpy as np
    import tritonclient.grpc as grpcclient

    repo = echo_repository(tmp_path)
    with TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run") as server:
        assert server.host == "127.0.0.1" and server.is_ready()
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            x = grpcclient.InferInput("X", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[1.5, -2.0]], np.float32))
            np.testing.assert_array_equal(client.infer("echo", [x]).as_numpy("X"), [[1.5, -2.0]])
            assert client.get_model_config("echo") is not None  # what rfkp's clients use stays open
            with pytest.raises(grpcclient.InferenceServerException):
                client.update_log_settings({"log_verbose_level": 2})  # the admin APIs are closed
        import urllib.error
        import urllib.request

        request = urllib.request.Request(f"http://{server.http_url}/v2/logging", data=b'{"log_verbose_level": 2}')
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5)
        pid = server.pid
    assert server.poll() is not None and not process_alive(pid)


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_addresses() -> None:
    assert normalise_host("[::1]") == normalise_host(" ::1 ") == "::1"
    assert normalise_host("localhost") == "localhost" and normalise_host("0.0.0.0") == "0.0.0.0"
    for bad in ("", "[]", "[localhost]", "[127.0.0.1]"):
        with pytest.raises(ValueError, match="host must be an IP address or a host name"):
            normalise_host(bad)
    assert url_host("::1") == "[::1]" and url_host("127.0.0.1") == "127.0.0.1" and url_host("host") == "host"


def test_serves_on_ipv6_loopback(tmp_path: Path) -> None:
    require_triton()
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    import socket

    import numpy as np
    import tritonclient.grpc as grpcclient

    repo = echo_repository(tmp_path)
    with TritonServer(repo, host="[::1]", grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run") as server:
        assert server.host == "::1" and server.grpc_url == f"[::1]:{server.grpc_port}"
        assert server.is_ready()  # readiness over HTTP on [::1]
        assert port_in_use("::1", server.grpc_port) and port_in_use("::1", server.metrics_port)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            x = grpcclient.InferInput("X", [1, 2], "FP32")
            x.set_data_from_numpy(np.array([[0.5, 4.0]], np.float32))
            np.testing.assert_array_equal(client.infer("echo", [x]).as_numpy("X"), [[0.5, 4.0]])
        with socket.socket() as sock:  # loopback only: nothing listens on the IPv4 side
            assert sock.connect_ex(("127.0.0.1", server.grpc_port)) != 0


def test_readiness_timeout_kills_the_server(tmp_path: Path) -> None:
    require_triton()
    repo = echo_repository(tmp_path, init_sleep=60)  # stands in for a server stuck in "loading"
    server = TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run")
    server.start()
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready after 3 s"):
        server.wait_ready(timeout=3)
    assert time.monotonic() - t0 < 30
    assert server.poll() is not None


def test_exit_while_loading_reports_the_log(tmp_path: Path) -> None:
    require_triton()
    repo = echo_repository(tmp_path)
    (repo / "echo" / "config.pbtxt").write_text("this is not a model configuration")
    server = TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run")
    server.start()
    with pytest.raises(ServerStartError, match="exited with code"):
        server.wait_ready(timeout=60)
    server.stop()


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_refused_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    repo = echo_repository(tmp_path)
    with socket.socket() as other:  # another server on the HTTP port would answer our readiness checks
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        server = TritonServer(repo, grpc_port=0, http_port=taken, metrics_port=0, workdir=tmp_path / "run",
                              installation=TritonInstallation(Path(sys.executable), "system"))  # fmt: skip
        with pytest.raises(ServerStartError, match=f"already in use on 127.0.0.1: HTTP {taken}"):
            server.start()
        assert server.pid is None
    import errno
    import socket

    from rfkp.serving import launcher

    class Refusing:  # a socket whose bind fails as the system says (no real address or DNS lookup needed)
        def __init__(self, error: OSError) -> None:
            self.error = error

        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def setsockopt(self, *args: object) -> None:
            pass

        def bind(self, address: object) -> None:
            raise self.error

    for error, message in [
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),  # not this machine's address
         "cannot listen on 192.0.2.1:8001: Cannot assign requested address"),  # (it was reported as in use)
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
         "host '192.0.2.1' does not resolve: Name or service not known"),
    ]:  # fmt: skip
        monkeypatch.setattr(launcher, "_socket", lambda host, error=error: Refusing(error))
        with pytest.raises(ServerStartError, match=re.escape(message)):
            launcher.port_in_use("192.0.2.1", 8001)
    monkeypatch.setattr(launcher, "_socket", lambda host: Refusing(OSError(errno.EADDRINUSE, "in use")))
    assert launcher.port_in_use("127.0.0.1", 8001)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="grpc_port must lie in 0..65535"):
        TritonServer(repo, grpc_port=70000, installation=TritonInstallation(Path(sys.executable), "system"))


def test_a_dead_model_process_is_reported(tmp_path: Path) -> None:
    require_triton()
    import signal

    repo = echo_repository(tmp_path)
    with TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run") as server:
        assert server.dead_model_processes() == []
        stubs = list(server._model_processes)
        assert stubs, "the python backend's model process was not found"
        os.kill(stubs[0], signal.SIGKILL)  # what the out-of-memory killer does
        deadline = time.monotonic() + 30
        while not server.dead_model_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any("echo" in cmd for cmd in server.dead_model_processes())
        assert server.is_ready()  # Triton itself goes on saying ready: hence the check


def test_shared_memory_of_a_killed_server_is_removed(tmp_path: Path) -> None:
    require_triton()
    import signal

    repo = echo_repository(tmp_path)
    server = TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run")
    with server:
        regions = list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
        assert regions, "the python backend did not use the server's own shared-memory prefix"
        os.kill(server.pid, signal.SIGKILL)  # no clean shutdown: the regions stay behind
        server._process.wait(timeout=30)
        assert any(region.exists() for region in regions)
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


def test_launch_refuses_ports_out_of_range_before_binding(tmp_path: Path) -> None:
    from rfkp.serving.deploy import launch

    for bad in (70000, -1, True):
        with pytest.raises(ValueError, match="grpc_port must lie in 0..65535"):
            launch(None, run_dir=tmp_path / "run", grpc_port=bad)  # was an OverflowError from the bind test
    assert not (tmp_path / "run").exists()


def test_the_same_port_twice_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from rfkp.serving.deploy import launch

    repo, system = echo_repository(tmp_path), TritonInstallation(Path(sys.executable), "system")
    for ports, message in (
        (dict(grpc_port=8123, http_port=8123), "grpc_port and http_port are both 8123"),
        (dict(grpc_port=8123, metrics_port=8123), "grpc_port and metrics_port are both 8123"),
        (dict(http_port=8124, metrics_port=8124), "http_port and metrics_port are both 8124"),
    ):
        with pytest.raises(ValueError, match=f"^{message}: give each its own port"):
            launch(None, run_dir=tmp_path / "run", **ports)
        with pytest.raises(ValueError, match=f"^{message}: give each its own port"):
            TritonServer(repo, installation=system, **{"grpc_port": 8001, "http_port": 8000, "metrics_port": 8002, **ports})
    assert not (tmp_path / "run").exists()  # refused before the run folder, the export or the rendering
    TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, installation=system)  # several 0s: free ports


def test_a_model_that_fails_to_load_is_reported_by_its_error_lines(tmp_path: Path) -> None:
    """The cause of a load failure comes before the option and model tables Triton prints: the report shows
    the log's error lines, not only its tail."""
    require_triton()
    repo = echo_repository(tmp_path)
    model = repo / "echo" / "1" / "model.py"
    model.write_text(model.read_text().replace("time.sleep(", "raise RuntimeError('echo cannot start: no widget') or ("))
    server = TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0, workdir=tmp_path / "run")
    server.start()
    try:
        with pytest.raises(ServerStartError) as info:
            server.wait_ready(timeout=60)
    finally:
        server.stop()
    message = str(info.value)
    errors = message.split("error lines of the log:\n")[1].split("log tail:")[0]
    assert "echo cannot start: no widget" in errors and "failed to load 'echo'" in errors, message
    assert str(server.log_path) in message


def test_an_engine_is_refused_with_the_embedded_server_before_anything_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rfkp.serving.deploy import launch
    from rfkp.serving.repository import ServingOptions

    try:
        embedded_installation()
    except TritonNotFoundError as exc:
        pytest.skip(f"no embedded server: {exc}")
    options = ServingOptions(engine=tmp_path / "model.plan")
    message = "needs a tritonserver with the TensorRT backend (for example in NGC's tritonserver container, with --server system)"
    with pytest.raises(ValueError, match=re.escape(message)):
        launch(None, options=options, run_dir=tmp_path / "run", server="embedded", grpc_port=0, http_port=0, metrics_port=0)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no tritonserver on PATH: "auto" is the embedded one
    with pytest.raises(ValueError, match=re.escape(message)):
        launch(None, options=options, run_dir=tmp_path / "run", grpc_port=0, http_port=0, metrics_port=0)
    assert not (tmp_path / "run").exists()


def test_launch_removes_the_run_folder_it_made_on_stop(tmp_path: Path, tiny_weights: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    require_triton()
    import shutil
    import tempfile

    from rfkp.serving.deploy import launch
    from rfkp.serving.repository import ServingOptions

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where launch makes its rfkp-serve-* folder
    options = ServingOptions(runtime="torch", num_threads=1)
    for keep in (False, True):
        kept = {"keep_run_dir": True} if keep else {}
        server, _ = launch(tiny_weights, options=options, grpc_port=0, http_port=0, metrics_port=0, **kept)
        (run,) = temp.iterdir()
        assert run.name.startswith("rfkp-serve-") and (run / "model_repository").is_dir()
        server.stop()
        assert list(temp.iterdir()) == ([run] if keep else [])
        shutil.rmtree(run, ignore_errors=True)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot read checkpoint"):
        launch(bad, options=options, grpc_port=0, http_port=0, metrics_port=0)
    assert list(temp.iterdir()) == []  # a start that fails before the server runs leaves nothing either
    with pytest.raises(ServerStartError, match=r"whole log: (\S+)\)") as failed:
        launch(tiny_weights, options=options, grpc_port=0, http_port=0, metrics_port=0, ready_timeout=0.01)
    log = Path(re.search(r"whole log: (\S+)\)", str(failed.value)).group(1))
    assert log.is_file() and log.is_relative_to(temp)  # the server ran: its log, named by the error, stays
    shutil.rmtree(next(temp.iterdir()))
    given = tmp_path / "given"
    server, _ = launch(tiny_weights, options=options, run_dir=given, grpc_port=0, http_port=0, metrics_port=0)
    server.stop()
    assert (given / "model_repository").is_dir()  # a caller's run folder is kept


def test_a_second_stop_signals_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first stop() has reaped the server and killed what was left of its group, the group id may
    belong to someone else: a second stop() (readiness timeout, __exit__ after stop) must not signal it."""
    import signal
    import subprocess

    from rfkp.serving import launcher

    signals: list[str] = []
    real_killpg = os.killpg

    def spy(pgid: int, sig: int) -> None:
        signals.append(signal.Signals(sig).name)
        real_killpg(pgid, sig)

    monkeypatch.setattr(launcher.os, "killpg", spy)
    server = object.__new__(TritonServer)  # a stand-in process, no tritonserver needed
    server._process = subprocess.Popen(["sleep", "30"], start_new_session=True)
    server._group_stopped = False
    server._after_stop = []
    server.shm_prefix = "rfkp_test_no_such_region_"
    assert server.stop() == -signal.SIGTERM
    assert signals == ["SIGTERM", "SIGKILL"]  # the group, then any survivor of it
    assert server.stop() == -signal.SIGTERM and signals == ["SIGTERM", "SIGKILL"]  # nothing more
