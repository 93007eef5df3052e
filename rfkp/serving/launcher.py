"""Start, watch and stop a real ``tritonserver`` process.

The server runs in its own process group (its python backend stubs are its children), gets SIGTERM
if the Python process that started it from its main thread dies (Linux), listens on loopback unless
told otherwise, and is always waited for with a timeout: a server that cannot load
its python backend (for example without ``libpython``) hangs in "loading" instead of failing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import ipaddress
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from rfkp.serving.embedded import TritonInstallation, find_installation

__all__ = ["ServerStartError", "TritonServer", "free_port", "normalise_host", "url_host"]

_PR_SET_PDEATHSIG = 1
PYTHON_STUB = "triton_python_backend_stub"  # the process of each python-backend model instance
logger = logging.getLogger(__name__)
# Triton's error lines ("E1122 01:47:52.364075 ...") and lines naming a model that did not load (the model table)
_LOG_ERROR = re.compile(r"^E\d{4} \d\d:\d\d:\d\d|failed to load|UNAVAILABLE")
_MAX_ERROR_LINES = 30
_MAX_ERROR_LINE_CHARS = 2000
# Triton APIs rfkp's clients never use, closed to requests without a random key made per start (not printed,
# though local users can read it from the command line): a remote client must not change logging (and fill the
# disk), register shared memory, or load and unload models
ADMIN_APIS = ("shared-memory", "model-repository", "trace", "logging")


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message holds its log's error lines and tail."""


def normalise_host(host: str) -> str:
    """An address or host name to bind: IPv6 addresses may come bracketed (``[::1]``) and are returned bare.

    Raises:
        ValueError: an empty host, or brackets around something that is not an IPv6 address.
    """
    text = str(host).strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not bare or (bare != text and not _is_ipv6(bare)):
        raise ValueError(f"host must be an IP address or a host name, got {host!r}")
    return bare


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as it appears in a URL or a gRPC target: IPv6 addresses in brackets."""
    return f"[{host}]" if _is_ipv6(host) else host


def _socket(host: str) -> socket.socket:
    return socket.socket(socket.AF_INET6 if _is_ipv6(host) else socket.AF_INET, socket.SOCK_STREAM)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with _socket(host) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_ports(**ports: int) -> None:
    """Each named port lies in 0..65535 (0: a free one) and no two are the same non-zero port (tritonserver would
    print its whole --help). Raises ValueError naming the first port, or the first two, that fail."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"{name} must lie in 0..65535 (0: a free one), got {port!r}")
        if port and port in seen:
            raise ValueError(f"{seen[port]} and {name} are both {port}: give each its own port (or 0: a free one)")
        seen[port] = name


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on (or holds) ``host:port`` (a bind test; TIME_WAIT does not count).

    Raises:
        ServerStartError: ``host`` does not resolve, or ``host:port`` cannot be listened on for another reason
            (an address this machine does not have, a privileged port), named with the system's reason.
    """
    try:
        with _socket(host) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror as exc:
        raise ServerStartError(f"host {host!r} does not resolve: {exc.strerror}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return True
        raise ServerStartError(f"cannot listen on {url_host(host)}:{port}: {exc.strerror}") from None
    return False


def refuse_taken_ports(host: str, **ports: int) -> None:
    """Raise ServerStartError naming each port (``grpc=8001, ...``; 0, any free one, is skipped) that something
    already holds on ``host``: another server there would answer the readiness checks of one that then dies."""
    taken = [f"{name} {port}" for name, port in ports.items() if port and port_in_use(host, port)]
    if taken:
        raise ServerStartError(f"port(s) already in use on {host}: {', '.join(taken)}; choose others or 0")


def _children(pid: int) -> dict[int, tuple[str, str]]:
    """{child pid: (state letter, command line)} of a process, from /proc (Linux; empty elsewhere)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(fields[1]) == pid:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(entry.name)] = (fields[0], cmdline.strip())
        except (OSError, ValueError, IndexError):
            continue
    return found


def _knows_restricted_apis(installation: TritonInstallation) -> bool:
    """Whether a (system) tritonserver has the restricted-API flags (older releases refuse them)."""
    return _help_mentions(str(installation.binary), "--http-restricted-api", tuple(installation.environment().items()))


@functools.cache
def _help_mentions(binary: str, flag: str, env: tuple[tuple[str, str], ...]) -> bool:
    try:
        result = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30, env=dict(env))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in result.stdout + result.stderr


def _parent_death_signal() -> Callable[[], object] | None:
    """A pre-exec hook asking Linux to SIGTERM the server when its parent dies (None elsewhere).

    The kernel ties this to the *thread* that forks, so it is only used from the main thread: a server
    started from a worker thread would otherwise die with that thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    return functools.partial(prctl, _PR_SET_PDEATHSIG, int(signal.SIGTERM))


class TritonServer:
    """One ``tritonserver`` process serving ``repository``.

    Args:
        repository: a Triton model repository (rendered, see ``rfkp.serving.repository``).
        installation: the binary to run; default: ``find_installation("auto")``.
        host: address for the gRPC, HTTP and metrics endpoints (loopback by default).
        grpc_port, http_port, metrics_port: ports; 0 picks a free one.
        workdir: folder for the backend links and the log (default: a new temporary folder).
        extra_args: more ``tritonserver`` command-line flags, appended last.
    """

    def __init__(
        self,
        repository: Path | str,
        *,
        installation: TritonInstallation | None = None,
        host: str = "127.0.0.1",
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        workdir: Path | str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        check_ports(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
        self.repository = Path(repository).resolve()
        if not any(self.repository.glob("*/config.pbtxt")):
            raise FileNotFoundError(f"{self.repository} is not a Triton model repository (no */config.pbtxt)")
        self.installation = installation or find_installation("auto")
        self.host = host = normalise_host(host)
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        # absolute: the server runs with cwd=workdir, so a relative --backend-directory would not resolve
        self.workdir = (Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="rfkp-triton-"))).resolve()
        self.extra_args = list(extra_args)
        self.log_path = self.workdir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._group_stopped = False  # set once stop() has reaped the process and killed what was left of its group
        self._after_stop: list[Callable[[], object]] = []
        self._model_processes: dict[int, str] = {}
        self._admin_key = secrets.token_hex(16)
        # the python backend's shared-memory regions get a prefix of their own, so that what a killed server
        # leaves in /dev/shm can be removed without touching other servers' regions
        self.shm_prefix = f"rfkp_{secrets.token_hex(6)}_"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (what tritonclient.grpc expects)."""
        return f"{url_host(self.host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{url_host(self.host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def command(self) -> list[str]:
        """The full command line (builds the backend folder for the embedded server)."""
        http_address = f"ipv6:{self.host}" if _is_ipv6(self.host) else self.host
        cmd = [
            str(self.installation.binary),
            f"--model-repository={self.repository}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            # Triton joins gRPC's address and port as is (an IPv6 address needs brackets) and hands the HTTP
            # ones to libevhtp, which takes IPv6 addresses as "ipv6:ADDRESS"
            f"--grpc-address={url_host(self.host)}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={http_address}",
            f"--http-port={self.http_port}",
            f"--metrics-address={http_address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.installation.kind != "embedded" and not _knows_restricted_apis(self.installation):
            logger.warning("%s has no --http-restricted-api: its administrative APIs (%s) stay open",
                           self.installation.binary, ", ".join(ADMIN_APIS))  # fmt: skip
        else:
            cmd += [
                f"--http-restricted-api={','.join(ADMIN_APIS)}:rfkp-admin-key={self._admin_key}",
                f"--grpc-restricted-protocol={','.join(ADMIN_APIS)}:rfkp-admin-key={self._admin_key}",
            ]
        backend_dir = self.installation.prepare_backend_dir(self.workdir / "backends")
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        return cmd + self.extra_args

    def start(self) -> None:
        """Launch the process (non-blocking); call ``wait_ready`` next."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"server already running (pid {self._process.pid})")
        refuse_taken_ports(self.host, gRPC=self.grpc_port, HTTP=self.http_port, metrics=self.metrics_port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        with open(self.log_path, "wb") as log:
            self._group_stopped = False
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.installation.environment(),
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the server log (empty if there is none yet)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return text[-max_chars:]

    def log_errors(self) -> list[str]:
        """The error lines of the server log: Triton's ``E`` lines and those saying a model failed to load or is
        UNAVAILABLE (the first ``_MAX_ERROR_LINES``, each cut at ``_MAX_ERROR_LINE_CHARS``, repeats once)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = [line[:_MAX_ERROR_LINE_CHARS] for line in text.splitlines() if _LOG_ERROR.search(line)]
        return list(dict.fromkeys(found))[:_MAX_ERROR_LINES]

    def failure_log(self, max_tail_chars: int = 2000) -> str:
        """What a failure report shows of the log: its error lines (the cause, which the option and model
        tables Triton prints later push out of a plain tail) ahead of the end of the log, and the log's path."""
        errors = self.log_errors()
        tail = self.log_tail(max_tail_chars)
        head = f"error lines of the log:\n{chr(10).join(errors)}\n" if errors else ""
        return f"{head}log tail:\n{tail}\n(whole log: {self.log_path})"

    def is_ready(self) -> bool:
        """True when ``/v2/health/ready`` answers 200 (all models loaded, strict readiness)."""
        url = f"http://{self.http_url}/v2/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
        try:
            with opener.open(url, timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until ready; return the seconds it took. Raises ServerStartError (and stops the
        server) if it exits or is not ready within ``timeout`` seconds."""
        if self._process is None:
            raise RuntimeError("start() the server first")
        t0 = time.monotonic()
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(f"tritonserver exited with code {code} while loading:\n{self.failure_log()}")
            if self.is_ready() and self._process.poll() is None:
                self._model_processes = {
                    pid: cmd for pid, (state, cmd) in _children(self._process.pid).items()
                    if state != "Z" and PYTHON_STUB in cmd
                }  # fmt: skip
                if not self._model_processes and any(self.repository.glob("*/1/model.py")):
                    logger.warning("no python-backend model processes found under pid %d: a model process that "
                                   "dies will not be noticed", self._process.pid)  # fmt: skip
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ServerStartError(
                    f"tritonserver not ready after {timeout:.0f} s (a python backend that cannot find "
                    f"libpython hangs in loading):\n{self.failure_log()}"
                )
            time.sleep(0.1)

    def call_after_stop(self, action: Callable[[], object]) -> None:
        """Run ``action`` once, after the next ``stop()`` (``launch`` removes the run folder it made itself)."""
        self._after_stop.append(action)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s; return the exit code. Then run the actions
        of ``call_after_stop``."""
        try:
            return self._stop_process(timeout)
        finally:
            while self._after_stop:
                self._after_stop.pop(0)()

    def _stop_process(self, timeout: float) -> int | None:
        proc = self._process
        if proc is None:
            return None
        if self._group_stopped:  # a second stop(): the process group is gone and its id may be reused
            return proc.returncode
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # stubs left behind by a crashed server share the group: make sure none survive
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._group_stopped = True
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):  # what a killed server could not remove
            with contextlib.suppress(OSError):
                region.unlink()
        return proc.returncode

    def poll(self) -> int | None:
        """The exit code if the process has exited, else None."""
        return None if self._process is None else self._process.poll()

    def dead_model_processes(self) -> list[str]:
        """Command lines of the model processes (python backend stubs) that were running when the server became
        ready and are gone now (killed, e.g. by the out-of-memory killer, or crashed). Triton neither restarts
        them nor stops reporting ready, so every request to their model fails from then on."""
        if self._process is None or not self._model_processes:
            return []
        alive = {pid for pid, (state, _) in _children(self._process.pid).items() if state != "Z"}
        return [cmd for pid, cmd in self._model_processes.items() if pid not in alive]

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
