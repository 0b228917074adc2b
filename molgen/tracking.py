"""MLflow glue: one :class:`Tracker` per training run, and reading runs back.

Where runs are stored (:func:`resolve_tracking_uri`: an explicit URI, ``$MLFLOW_TRACKING_URI`` or the
local ``./mlruns.db``) is :mod:`molgen.tracking_store`, importable from here too; ``molgen ui`` is
:mod:`molgen.ui`.

The tracker talks to MLflow through :class:`mlflow.tracking.MlflowClient` with explicit run ids and
never touches MLflow's global "active run", so several trackers (tests, resumes) cannot interfere.
A tracker built with ``enabled=False`` (DDP ranks > 0) does nothing at all.

MLflow is imported lazily: ``import molgen.tracking`` stays cheap for ``molgen --help``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from molgen.errors import MolgenError
from molgen.tracking_store import (
    DEFAULT_ARTIFACTS,
    DEFAULT_DB,
    default_tracking_uri,
    ensure_experiment,
    fetch_run,
    local_artifact_root,
    mlflow_client,
    quiet_mlflow_warnings,
    resolve_tracking_uri,
    store_error,
)

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_ARTIFACTS", "DEFAULT_DB", "RESUME_TAG", "RUN_STATUSES", "Tracker", "default_tracking_uri",
    "download_artifact", "flatten_params", "get_run", "local_artifact_root", "resolve_tracking_uri",
]  # fmt: skip

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

_log = logging.getLogger(__name__)


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
            client = mlflow_client(self.tracking_uri, create=False)
            run = fetch_run(client, run_id, self.tracking_uri)
            assert client is not None
            if run.info.lifecycle_stage == "deleted":
                raise MolgenError(f"MLflow run {run_id!r} is deleted in {self.tracking_uri}; cannot resume")
            self._resume_index = int(run.data.tags.get(RESUME_TAG, "0")) + 1
            try:
                with quiet_mlflow_warnings():
                    client.update_run(run_id, status="RUNNING", name=run_name)
                    client.set_tag(run_id, RESUME_TAG, str(self._resume_index))
            except MlflowException as exc:
                raise store_error(self.tracking_uri, exc) from None
            self._params = dict(run.data.params)
            self.resumed = True
        else:
            client = mlflow_client(self.tracking_uri, create=True)
            assert client is not None
            with quiet_mlflow_warnings():
                self.experiment_id = ensure_experiment(client, experiment, self.tracking_uri)
                from mlflow.tracking.context.registry import resolve_tags

                try:
                    run = client.create_run(self.experiment_id, run_name=run_name, tags=resolve_tags())
                except MlflowException as exc:
                    raise store_error(self.tracking_uri, exc) from None
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

    def log_model(self, checkpoint: str | os.PathLike, *, step: int = 0) -> str | None:
        """Log ``checkpoint`` as the run's MLflow model (:func:`molgen.mlflow_model.log_model`); returns
        its URI. A failure is a one-line warning on stderr (the run's artifacts are already logged)."""
        if not self._active:
            return None
        from molgen.mlflow_model import log_model

        try:
            return log_model(checkpoint, run_id=self._run_id, experiment_id=self.experiment_id,
                             tracking_uri=self.tracking_uri, step=step)
        except Exception as exc:  # noqa: BLE001 - never fail a finished training over the model listing
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"warning: could not log the MLflow model of run {self._run_id}: {reason}", file=sys.stderr)
            return None

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
    return fetch_run(mlflow_client(uri, create=False), run_id, uri)


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
    client = mlflow_client(uri, create=False)
    fetch_run(client, run_id, uri)
    if dst is not None:
        Path(dst).mkdir(parents=True, exist_ok=True)
    try:
        with quiet_mlflow_warnings():
            local = client.download_artifacts(run_id, artifact_path, None if dst is None else str(dst))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise MolgenError(f"MLflow run {run_id!r} has no artifact {artifact_path!r}") from None
        raise
    return Path(local)
