"""``molgen ui``: serve the MLflow UI for a run store on the loopback interface."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys

from molgen.errors import MolgenError
from molgen.tracking_store import is_http, local_artifact_root, mlflow_client, resolve_tracking_uri, sqlite_path

#: MLflow 3's UI opens on its GenAI view unless the URL asks for the model-training one (a per-browser
#: setting; the experiment tag ``mlflow.experimentKind`` alone does not switch it)
TRAINING_VIEW = "?workflowType=machine_learning"


def ui_url(tracking_uri: str, base: str, experiment: str = "molgen") -> str:
    """The page to open: the ``experiment``'s runs in MLflow's model-training view (the start page
    in that view when the store has no such experiment yet)."""
    with contextlib.suppress(Exception):  # the address is a convenience: never fail the UI on it
        client = mlflow_client(tracking_uri, create=False)
        found = client.get_experiment_by_name(experiment) if client is not None else None
        if found is not None:
            return f"{base}/#/experiments/{found.experiment_id}{TRAINING_VIEW}"
    return f"{base}/#/{TRAINING_VIEW}"


def ui_command(tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` argv that serves the UI for a store (run with this interpreter's mlflow).

    A local store gets its ``mlartifacts`` folder as the default artifact root, so experiments created
    from the UI keep artifacts next to the database too. Access logs are off: the UI polls constantly.

    Raises:
        MolgenError: for an ``http(s)`` URI, which is a tracking server with its own UI already.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if is_http(uri) or uri.startswith("databricks"):
        raise MolgenError(f"{uri} is a tracking server with its own UI; open it in a browser")
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--registry-store-uri", uri]
    root = local_artifact_root(uri)
    if root is not None:
        argv += ["--default-artifact-root", root.as_uri(), "--artifacts-destination", root.as_uri()]
    argv += ["--host", host, "--port", str(port), "--workers", "1"]
    argv += ["--uvicorn-opts", "--no-access-log --log-level warning"]
    return argv


def _ui_env() -> dict[str, str]:
    """Environment for the UI server: MLflow's INFO chatter and a Starlette deprecation notice off."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Jobs (GenAI scorers) start extra worker processes the molgen UI has no use for.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    quiet = "ignore:starlette.middleware.wsgi is deprecated"
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), quiet) if w)
    return env


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def launch_ui(tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Serve the MLflow UI for a store until Ctrl-C; returns the exit code (0 after Ctrl-C).

    Prints ``MLflow UI: http://HOST:PORT/#/experiments/ID?workflowType=machine_learning (store: URI)``
    first (:func:`ui_url`: molgen's experiment in the model-training view). For an ``http(s)`` store it only prints
    that server's address.

    Raises:
        MolgenError: no local store there yet, the port is taken, or the server fails to start.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if is_http(uri):
        print(f"MLflow UI: {uri} (a running tracking server; nothing to start)", flush=True)
        return 0
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise MolgenError(f"no MLflow store at {db}; train a model here first or pass --tracking-uri")
    if not _port_free(host, port):
        raise MolgenError(f"port {port} on {host} is in use; choose another with --port")
    argv = ui_command(uri, host=host, port=port)
    url_host = f"[{host}]" if ":" in host else host
    print(f"MLflow UI: {ui_url(uri, f'http://{url_host}:{port}')} (store: {uri})", flush=True)
    proc = subprocess.Popen(argv, env=_ui_env())
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reaches the whole foreground group; a SIGINT sent to this process
        # alone must still stop the server (mlflow forwards it to its uvicorn child).
        with contextlib.suppress(ProcessLookupError):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
        return 0
    if code != 0:
        raise MolgenError(f"the MLflow UI server exited with status {code}", exit_code=1)
    return 0
