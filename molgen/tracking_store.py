"""Where MLflow runs live: tracking-URI resolution, local artifact roots, and opening a store.

Store resolution (:func:`resolve_tracking_uri`): an explicit ``tracking_uri`` argument (CLI
``--tracking-uri``) wins, then the ``MLFLOW_TRACKING_URI`` environment variable, then the embedded
default, a local store in the current working directory: the SQLite database ``./mlruns.db`` with
artifacts under ``./mlartifacts/<experiment>/<run_id>/artifacts``. Any local SQLite store keeps its
artifacts in an ``mlartifacts`` folder next to the database, so artifacts never land in whatever
folder a process happened to start in.

:func:`mlflow_client` opens a store (creating a local one on request, checking first that a tracking
server answers) and :func:`store_error` / :func:`fetch_run` / :func:`ensure_experiment` turn MLflow's
failures into one-line errors (:class:`~molgen.errors.MolgenError`). Importing this module quiets
MLflow chatter a user does not need; MLflow itself is imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from molgen.errors import MolgenError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,255}$")
_SQLITE = "sqlite:///"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: not a Windows drive

# Quiet the MLflow chatter a user does not need. Each line respects an explicit user choice.
if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
    # "Creating initial MLflow database tables..." / "Updating database tables" on a new SQLite store
    # (MLflow already holds alembic's own migration lines at WARNING).
    # Its ERROR record of a failed query (the SQL and a SQLAlchemy traceback) is not shown either:
    # every store error reaches the user as one line (store_error).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# tqdm bars on every artifact download, even of one small file.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def quiet_mlflow_warnings() -> Iterator[None]:
    """Hide deprecation noise that MLflow's dependencies raise on a user's behalf (e.g. SQLAlchemy's
    ``noload`` SADeprecationWarning when MLflow builds its SQL store)."""
    with warnings.catch_warnings():
        for module in (r"mlflow(\.|$)", r"sqlalchemy(\.|$)", r"alembic(\.|$)", r"pydantic(\.|$)"):
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        yield


def default_tracking_uri() -> str:
    """``sqlite:///<absolute cwd>/mlruns.db``: the embedded local store."""
    return _SQLITE + str(Path.cwd().resolve() / DEFAULT_DB)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI to use: ``uri`` > ``$MLFLOW_TRACKING_URI`` > :func:`default_tracking_uri`.

    Local stores are made absolute (a relative ``sqlite:///runs.db`` means ``<cwd>/runs.db`` *now*,
    not wherever a later process starts), and a plain path ending in ``.db``/``.sqlite``/``.sqlite3``
    becomes an SQLite URI. Other plain paths become ``file:`` URIs, MLflow's legacy file store.
    """
    uri = (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return default_tracking_uri()
    if uri.startswith(_SQLITE):
        path, sep, query = uri[len(_SQLITE) :].partition("?")
        if path in ("", ":memory:"):
            return uri
        return _SQLITE + str((Path.cwd() / path).resolve()) + sep + query
    if uri.startswith("file:"):
        return Path(_file_uri_path(uri)).resolve().as_uri()
    if not _SCHEME.match(uri) and uri not in ("databricks", "databricks-uc"):  # a plain path
        path = Path(uri).expanduser()
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return _SQLITE + str(path.resolve())
        return path.resolve().as_uri()
    return uri


def _file_uri_path(uri: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite URI, else ``None``."""
    if not uri.startswith(_SQLITE):
        return None
    path = uri[len(_SQLITE) :].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def local_artifact_root(uri: str) -> Path | None:
    """Where a local store keeps artifacts: ``<folder of the SQLite db or file store>/mlartifacts``.

    ``None`` for remote stores (a tracking server decides for itself).
    """
    db = sqlite_path(uri)
    if db is not None:
        return db.parent / DEFAULT_ARTIFACTS
    if uri.startswith("file:"):
        return Path(_file_uri_path(uri)).parent / DEFAULT_ARTIFACTS
    return None


def is_http(uri: str) -> bool:
    """Whether ``uri`` names an ``http(s)`` tracking server."""
    return uri.startswith(("http://", "https://"))


_reachable: set[str] = set()


def _check_reachable(uri: str) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when a tracking server is down."""
    if uri in _reachable:
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise MolgenError(f"cannot reach the MLflow tracking server at {uri} ({reason})") from None
    _reachable.add(uri)


def mlflow_client(uri: str, *, create: bool) -> MlflowClient | None:
    """An MLflow client for ``uri``; ``None`` when ``create`` is false and the local store does not exist."""
    db = sqlite_path(uri)
    if db is not None:
        if not db.exists():
            if not create:
                return None
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MolgenError(f"cannot create the MLflow store {uri}: {exc.strerror or exc}") from None
    elif is_http(uri):
        _check_reachable(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with quiet_mlflow_warnings(), _store_lock(db):
            return MlflowClient(tracking_uri=uri)  # builds (and migrates) the store right away
    except (MlflowException, ImportError) as exc:
        raise store_error(uri, exc) from None


@contextlib.contextmanager
def _store_lock(db: Path | None) -> Iterator[None]:
    """Serialize the creation / migration of a local SQLite store between processes: two first runs
    starting together would otherwise both create its tables ("table ... already exists")."""
    if db is None:
        yield
        return
    import fcntl

    try:
        fh = open(db.with_name(db.name + ".lock"), "a")
    except OSError:  # a read-only folder: nothing to create there anyway; the store reports its error
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def store_error(uri: str, exc: Exception) -> MolgenError:
    """A one-line error for a store MLflow cannot open or use (first sentence of MLflow's message)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if "MLFLOW_ALLOW_FILE_STORE" in text:  # MLflow 3 refuses file stores unless told otherwise
        msg = "MLflow 3 refuses file stores by default; use SQLite (e.g. --tracking-uri mlruns.db) "
        msg += "or set MLFLOW_ALLOW_FILE_STORE=true"
    elif isinstance(exc, ImportError):
        msg = f"{exc} (install the database driver for this URI)"
    elif "readonly database" in text or "read-only" in text.lower() or "unable to open database" in text:
        msg = "the store is read-only or cannot be opened for writing (point --tracking-uri elsewhere)"
    else:
        msg = text.splitlines()[0].split(". ")[0].rstrip(".")
    return MolgenError(f"cannot use the MLflow store {uri}: {msg}")


def _no_run(run_id: str, uri: str) -> MolgenError:
    return MolgenError(f"no MLflow run {run_id!r} in {uri}")


def fetch_run(client: MlflowClient | None, run_id: str, uri: str) -> Run:
    """``client.get_run`` with a one-line :class:`MolgenError` for unknown or malformed ids."""
    from mlflow.exceptions import MlflowException

    if client is None or not _RUN_ID.match(run_id):
        raise _no_run(run_id, uri)
    try:
        with quiet_mlflow_warnings():
            return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise _no_run(run_id, uri) from None
        raise store_error(uri, exc) from None


def run_exists(run_id: str, uri: str) -> bool:
    """Whether the store at ``uri`` holds run ``run_id`` (False also when the store does not exist)."""
    try:
        fetch_run(mlflow_client(uri, create=False), run_id, uri)
    except MolgenError:
        return False
    return True


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"


#: Tags of the experiments molgen creates: ``mlflow.experimentKind`` makes MLflow 3's UI open them on the
#: model-training view (runs, metrics, logged models) instead of the GenAI "Evaluation runs" page.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Id of experiment ``name``, created if missing (local stores: artifacts in ``mlartifacts/<name>``),
    tagged :data:`EXPERIMENT_TAGS` (also an existing experiment that has no kind yet)."""
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            root = local_artifact_root(uri)
            location = (root / _safe_dirname(name)).as_uri() if root is not None else None
            try:
                return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # lost a race with another process
                    raise
                exp = client.get_experiment_by_name(name)
                assert exp is not None
    except MlflowException as exc:
        raise store_error(uri, exc) from None
    if exp.lifecycle_stage == "deleted":
        raise MolgenError(
            f"MLflow experiment {name!r} is deleted in {uri}; restore it or choose another experiment name"
        )
    missing = {k: v for k, v in EXPERIMENT_TAGS.items() if k not in (exp.tags or {})}
    try:
        for key, value in missing.items():
            client.set_experiment_tag(exp.experiment_id, key, value)
    except MlflowException as exc:
        raise store_error(uri, exc) from None
    return exp.experiment_id
