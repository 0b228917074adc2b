"""MLflow glue: where runs are stored, one :class:`Tracker` per training run, and ``molgen ui``.

Store resolution (:func:`resolve_tracking_uri`): an explicit ``tracking_uri`` argument (CLI
``--tracking-uri``) wins, then the ``MLFLOW_TRACKING_URI`` environment variable, then the embedded
default, a local store in the current working directory: the SQLite database ``./mlruns.db`` with
artifacts under ``./mlartifacts/<experiment>/<run_id>/artifacts``. Any local SQLite store keeps its
artifacts in an ``mlartifacts`` folder next to the database, so artifacts never land in whatever
folder a process happened to start in.

The tracker talks to MLflow through :class:`mlflow.tracking.MlflowClient` with explicit run ids and
never touches MLflow's global "active run", so several trackers (tests, resumes) cannot interfere.
A tracker built with ``enabled=False`` (DDP ranks > 0) does nothing at all.

MLflow is imported lazily: ``import molgen.tracking`` stays cheap for ``molgen --help``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from molgen.errors import MolgenError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
RESUME_TAG = "molgen.resumes"  # how many times the run was resumed

# MLflow's own limits (mlflow.utils.validation); a longer value is truncated, not rejected.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_TRUNCATED = "...[truncated]"
_BAD_KEY_CHARS = re.compile(r"[^\w./ :-]")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,255}$")
_SQLITE = "sqlite:///"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: not a Windows drive

_log = logging.getLogger(__name__)

# Quiet the MLflow chatter a user does not need. Each line respects an explicit user choice.
if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
    # "Creating initial MLflow database tables..." / "Updating database tables" on a new SQLite store
    # (MLflow already holds alembic's own migration lines at WARNING).
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
# tqdm bars on every artifact download, even of one small file.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Hide deprecation noise that MLflow's dependencies raise on a user's behalf (e.g. SQLAlchemy's
    ``noload`` SADeprecationWarning when MLflow builds its SQL store)."""
    with warnings.catch_warnings():
        for module in (r"mlflow(\.|$)", r"sqlalchemy(\.|$)", r"alembic(\.|$)", r"pydantic(\.|$)"):
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        yield


# --------------------------------------------------------------------------------------------------
# Where runs live
# --------------------------------------------------------------------------------------------------


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


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a local SQLite URI, else ``None``."""
    if not uri.startswith(_SQLITE):
        return None
    path = uri[len(_SQLITE) :].partition("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def local_artifact_root(uri: str) -> Path | None:
    """Where a local store keeps artifacts: ``<folder of the SQLite db or file store>/mlartifacts``.

    ``None`` for remote stores (a tracking server decides for itself).
    """
    db = _sqlite_path(uri)
    if db is not None:
        return db.parent / DEFAULT_ARTIFACTS
    if uri.startswith("file:"):
        return Path(_file_uri_path(uri)).parent / DEFAULT_ARTIFACTS
    return None


def _is_http(uri: str) -> bool:
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


def _client(uri: str, *, create: bool) -> MlflowClient | None:
    """An MLflow client for ``uri``; ``None`` when ``create`` is false and the local store does not exist."""
    db = _sqlite_path(uri)
    if db is not None:
        if not db.exists():
            if not create:
                return None
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MolgenError(f"cannot create the MLflow store {uri}: {exc.strerror or exc}") from None
    elif _is_http(uri):
        _check_reachable(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        with _quiet_warnings():
            return MlflowClient(tracking_uri=uri)  # builds (and migrates) the store right away
    except (MlflowException, ImportError) as exc:
        raise _store_error(uri, exc) from None


def _store_error(uri: str, exc: Exception) -> MolgenError:
    """A one-line error for a store MLflow cannot open or use (first sentence of MLflow's message)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if "MLFLOW_ALLOW_FILE_STORE" in text:  # MLflow 3 refuses file stores unless told otherwise
        msg = "MLflow 3 refuses file stores by default; use SQLite (e.g. --tracking-uri mlruns.db) "
        msg += "or set MLFLOW_ALLOW_FILE_STORE=true"
    elif isinstance(exc, ImportError):
        msg = f"{exc} (install the database driver for this URI)"
    else:
        msg = text.splitlines()[0].split(". ")[0].rstrip(".")
    return MolgenError(f"cannot use the MLflow store {uri}: {msg}")


def _no_run(run_id: str, uri: str) -> MolgenError:
    return MolgenError(f"no MLflow run {run_id!r} in {uri}")


def _fetch_run(client: MlflowClient | None, run_id: str, uri: str) -> Run:
    """``client.get_run`` with a one-line :class:`MolgenError` for unknown or malformed ids."""
    from mlflow.exceptions import MlflowException

    if client is None or not _RUN_ID.match(run_id):
        raise _no_run(run_id, uri)
    try:
        with _quiet_warnings():
            return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise _no_run(run_id, uri) from None
        raise _store_error(uri, exc) from None


def _safe_dirname(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"


def _ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Id of experiment ``name``, created if missing (local stores: artifacts in ``mlartifacts/<name>``)."""
    from mlflow.exceptions import MlflowException

    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            root = local_artifact_root(uri)
            location = (root / _safe_dirname(name)).as_uri() if root is not None else None
            try:
                return client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # lost a race with another process
                    raise
                exp = client.get_experiment_by_name(name)
                assert exp is not None
    except MlflowException as exc:
        raise _store_error(uri, exc) from None
    if exp.lifecycle_stage == "deleted":
        raise MolgenError(
            f"MLflow experiment {name!r} is deleted in {uri}; restore it or choose another experiment name"
        )
    return exp.experiment_id


# --------------------------------------------------------------------------------------------------
# Flattening configs into params
# --------------------------------------------------------------------------------------------------


def _clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", key)[:_MAX_KEY]


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(_TRUNCATED)] + _TRUNCATED


def _to_str(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    return str(value)


def flatten_params(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts/dataclasses into ``{"a.b.c": "value"}`` MLflow params.

    Values are stringified (lists stay one value: ``"['gap', 'mu']"``) and clipped to MLflow's
    6000-character limit; characters MLflow rejects in keys become ``_``. An empty mapping is kept
    as the value ``"{}"`` so the key stays visible.
    """
    if _is_dataclass_instance(config):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if _is_dataclass_instance(value) or (isinstance(value, Mapping) and value):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[_clean_key(name)] = _clip(_to_str(value), _MAX_PARAM_VALUE)
    return out


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------------------------------
# The run tracker
# --------------------------------------------------------------------------------------------------


class Tracker:
    """One MLflow run: params, per-step metrics, artifacts, tags and the final status.

    Args:
        tracking_uri: store URI; see :func:`resolve_tracking_uri` for the default.
        experiment: experiment name, created on first use. Ignored when resuming (a run keeps its
            experiment).
        run_id: resume this run (``molgen train --resume``): its status goes back to RUNNING and
            metrics continue at whatever steps the caller logs. Unknown ids raise :class:`MolgenError`.
        run_name: display name of a new run (renames a resumed one).
        tags: extra tags; MLflow's context tags (user, source, git commit) are added to new runs.
        enabled: ``False`` makes every method a no-op and :attr:`run_id` ``None`` (DDP ranks > 0).

    Params are immutable in MLflow. :meth:`log_params` therefore skips keys a run already holds with
    the same value, and logs a *changed* value under ``resume.<n>.<key>`` — ``n`` is the number of the
    resume (tag ``molgen.resumes``; 0 for a change within the first session) — so both the original
    and the new value stay visible and searchable.

    Use as a context manager to finish the run as FINISHED (also on ``sys.exit(0)``), KILLED
    (KeyboardInterrupt or a non-zero ``sys.exit``, e.g. from a SIGTERM handler) or FAILED (any other
    exception)::

        with Tracker(experiment="molgen", enabled=rank == 0) as tracker:
            tracker.log_params(config)
            tracker.log_metrics({"loss": 0.3}, step=100)
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "molgen",
        *,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment_id: str | None = None
        self.artifact_uri: str | None = None
        self.resumed = False
        self._run_id: str | None = None
        self._client: MlflowClient | None = None
        self._params: dict[str, str] = {}
        self._resume_index = 0
        self._warned: set[str] = set()
        self._finished = False
        if not enabled:
            return

        from mlflow.exceptions import MlflowException

        if run_id is not None:
            client = _client(self.tracking_uri, create=False)
            run = _fetch_run(client, run_id, self.tracking_uri)
            assert client is not None
            if run.info.lifecycle_stage == "deleted":
                raise MolgenError(f"MLflow run {run_id!r} is deleted in {self.tracking_uri}; cannot resume")
            self._resume_index = int(run.data.tags.get(RESUME_TAG, "0")) + 1
            try:
                with _quiet_warnings():
                    client.update_run(run_id, status="RUNNING", name=run_name)
                    client.set_tag(run_id, RESUME_TAG, str(self._resume_index))
            except MlflowException as exc:
                raise _store_error(self.tracking_uri, exc) from None
            self._params = dict(run.data.params)
            self.resumed = True
        else:
            client = _client(self.tracking_uri, create=True)
            assert client is not None
            with _quiet_warnings():
                self.experiment_id = _ensure_experiment(client, experiment, self.tracking_uri)
                from mlflow.tracking.context.registry import resolve_tags

                try:
                    run = client.create_run(self.experiment_id, run_name=run_name, tags=resolve_tags())
                except MlflowException as exc:
                    raise _store_error(self.tracking_uri, exc) from None
        self._client = client
        self._run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.artifact_uri = run.info.artifact_uri
        if tags:
            self.set_tags(tags)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (``None`` when disabled)."""
        return self._run_id

    @property
    def _active(self) -> bool:
        return self._client is not None and self._run_id is not None

    def log_params(self, config: Mapping[str, Any] | Any) -> None:
        """Log a (nested) config as params; see :func:`flatten_params` and the class docstring."""
        if not self._active:
            return
        from mlflow.entities import Param

        new: dict[str, str] = {}
        changed: list[str] = []
        for key, value in flatten_params(config).items():
            old = self._params.get(key)
            if old == value:
                continue
            if old is not None:
                key = _clean_key(f"resume.{self._resume_index}.{key}")
                if self._params.get(key, value) != value:
                    msg = f"param {key!r} already holds another value; not logging {value!r}"
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)
                    continue
                changed.append(key)
            new[key] = value
        for chunk in _chunks([Param(k, v) for k, v in new.items()], _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)
        self._params.update(new)
        if changed:
            _log.warning("run %s: changed params logged as %s", self._run_id, ", ".join(changed))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step``. Non-finite or non-numeric values are dropped with a warning
        (once per key), so a NaN loss never crashes the training loop through its logging."""
        if not self._active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                if key not in self._warned:
                    self._warned.add(key)
                    msg = f"not logging metric {key!r}={value!r} at step {step}: not a finite number"
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)
                continue
            batch.append(Metric(_clean_key(key), number, now, int(step)))
        for chunk in _chunks(batch, _MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file (or a whole folder) into the run's artifacts, under ``artifact_path``."""
        if not self._active:
            return
        path = Path(path)
        if not path.exists():
            raise MolgenError(f"cannot log artifact {path}: no such file")
        if path.is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self._run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` to the artifact ``artifact_file`` (e.g. ``"samples/step_1000.smi"``)."""
        if self._active:
            self._client.log_text(self._run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags; values are stringified and clipped to MLflow's limit."""
        if not self._active or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(_clean_key(str(k)), _clip(_to_str(v), _MAX_TAG_VALUE)) for k, v in tags.items()]
        for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=chunk)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED). Calling it again does nothing."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        if not self._active or self._finished:
            return
        self._finished = True
        self._client.set_terminated(self._run_id, status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self.finish("FINISHED")
            return
        # Ctrl-C, or a signal handler's sys.exit(128 + signum), stopped the run; anything else failed.
        status = "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"
        try:
            self.finish(status)
        except Exception:  # never hide the exception that ended the run
            _log.warning("could not mark MLflow run %s as %s", self._run_id, status, exc_info=True)


# --------------------------------------------------------------------------------------------------
# Reading runs back
# --------------------------------------------------------------------------------------------------


def get_run(run_id: str, tracking_uri: str | None = None) -> Run:
    """The MLflow run ``run_id`` (params, metrics, tags, info); :class:`MolgenError` if unknown."""
    uri = resolve_tracking_uri(tracking_uri)
    return _fetch_run(_client(uri, create=False), run_id, uri)


def download_artifact(
    run_id: str,
    artifact_path: str,
    tracking_uri: str | None = None,
    dst: str | os.PathLike | None = None,
) -> Path:
    """Download one artifact file or folder of a run and return its local path.

    ``dst`` is a folder (created if needed); without it MLflow picks a fresh temporary folder. A local
    store's artifacts are copied too, so callers may modify the result freely.
    """
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri, create=False)
    _fetch_run(client, run_id, uri)
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_warnings():
            local = client.download_artifacts(run_id, artifact_path, None if dst is None else str(dst))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise MolgenError(f"MLflow run {run_id!r} has no artifact {artifact_path!r}") from None
        raise
    return Path(local)
