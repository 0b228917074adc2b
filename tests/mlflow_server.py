"""A real ``mlflow server`` on 127.0.0.1 for tests that track over HTTP.

The server keeps runs in an SQLite database in a temporary folder and proxies artifacts
(``--artifacts-destination``), so clients upload and download them over HTTP through
``mlflow-artifacts:`` URIs, as with a team server. It listens on loopback only; telemetry and
MLflow's job runner are off, and proxies are bypassed for 127.0.0.1, so nothing leaves the machine.

Two ways to use it:

* the context manager, for a private server::

      with mlflow_server(tmp_path) as uri:   # "http://127.0.0.1:PORT"
          ...

* the session-scoped pytest fixture ``mlflow_server_uri``, shared by every test of the session.
  A test file imports it (pytest finds fixtures by name in the module's namespace)::

      from tests.mlflow_server import mlflow_server_uri  # noqa: F401

      def test_something(mlflow_server_uri: str) -> None: ...

  Each importing module registers its own copy of the fixture; a reference count makes all copies
  share one server, started on first use and stopped when the last copy is torn down. (Listing
  ``pytest_plugins = ["tests.mlflow_server"]`` in ``tests/conftest.py`` works too, without imports.)

Starting takes ~8 s on two CPU cores (uvicorn, one worker, plus SQLite migrations).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# MLflow checks this before every usage event it would report; the tests never report any.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _server_env() -> dict[str, str]:
    """The test process's environment minus MLflow settings that could redirect the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # no huey job runner processes
        NO_PROXY=_with_loopback(env.get("NO_PROXY")),
        no_proxy=_with_loopback(env.get("no_proxy")),
    )
    return env


def _with_loopback(no_proxy: str | None) -> str:
    hosts = [h for h in (no_proxy or "").split(",") if h]
    return ",".join(hosts + [h for h in (HOST, "localhost") if h not in hosts])


@contextlib.contextmanager
def _loopback_bypasses_proxies() -> Iterator[None]:
    """Make this process's HTTP clients (requests in MlflowClient) go straight to 127.0.0.1."""
    saved = {k: os.environ.get(k) for k in ("NO_PROXY", "no_proxy")}
    for key, value in saved.items():
        os.environ[key] = _with_loopback(value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _healthy(uri: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's whole process group (mlflow CLI + uvicorn + workers), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Workers may outlive the CLI process that led the group; make sure none is left behind.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _start(workdir: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    uri = f"http://{HOST}:{port}"
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination", str(workdir / "artifacts"),
        "--host", HOST,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log_path = workdir / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, cwd=workdir, env=_server_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(uri):
            return proc, uri
        if proc.poll() is not None:
            _stop(proc)
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
        time.sleep(0.25)
    _stop(proc)
    raise TimeoutError(f"mlflow server not healthy after {timeout:.0f} s:\n{_tail(log_path)}")


@contextlib.contextmanager
def mlflow_server(workdir: str | os.PathLike, timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """Run ``mlflow server`` with its store in ``workdir``; yield its ``http://127.0.0.1:PORT`` URI.

    Raises:
        RuntimeError / TimeoutError: the server died or did not answer ``/health`` in ``timeout``
            seconds; the message ends with the server log (also in ``workdir/server.log``).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # another process may grab the free port before the server binds it
        try:
            proc, uri = _start(workdir, timeout)
            break
        except RuntimeError:
            if attempt == 2 or "address already in use" not in _tail(workdir / "server.log").lower():
                raise
    try:
        with _loopback_bypasses_proxies():
            yield uri
    finally:
        _stop(proc)


_shared: dict = {"users": 0, "uri": None, "stack": None}


@pytest.fixture(scope="session")
def mlflow_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of one MLflow server shared by the whole test session (see the module docstring)."""
    if _shared["users"] == 0:
        stack = contextlib.ExitStack()
        _shared["uri"] = stack.enter_context(mlflow_server(tmp_path_factory.mktemp("mlflow-server")))
        _shared["stack"] = stack
    _shared["users"] += 1
    try:
        yield _shared["uri"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared["stack"].close()
            _shared["stack"] = _shared["uri"] = None
