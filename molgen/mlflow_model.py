"""A trained model as an MLflow model, loaded without running code from any file.

Training logs its checkpoint as an MLflow model named ``model`` (:func:`log_model`): it is listed
under the experiment's "Logged models", can be registered (``mlflow.register_model``) and
``mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"n": [8], "gap": ["6.5eV"]}))`` generates
molecules. The model is a *loader-module* pyfunc model: its ``MLmodel`` file names
``loader_module: molgen.mlflow_model`` and its data is a slim copy of the checkpoint
(``data/checkpoint.pt``).
There is no pickled ``PythonModel`` (cloudpickle) anywhere: loading imports only this installed
module, whose :func:`_load_pyfunc` reads the checkpoint with molgen's safe loader
(``weights_only`` plus the integrity digest, :mod:`molgen.safe_load`).

``molgen generate --model-uri models:/NAME/VERSION`` (or ``runs:/RUN_ID/model``) does not use
MLflow's loader at all (:func:`model_checkpoint`): it downloads the ``MLmodel`` file, refuses any
model whose pyfunc flavor names another loader module (never importing or unpickling what it
names), then downloads the checkpoint and loads it like ``--checkpoint``.

Input of ``predict``: one row per request; columns ``n`` (molecules, required), ``seed`` (optional,
default 0) and one optional column per property the model is conditioned on, holding a
``--target`` value in molgen's user units (``"6.5eV"``, ``"150meV"``, ``6.5``). Params: ``steps``
and ``guidance`` (as for ``molgen generate``). Output: one row per molecule, columns ``request``
(the input row), ``smiles`` (``None`` when invalid), ``n_atoms`` and ``valid`` (molgen's validity:
EDM's rule for point clouds, strict for graphs; :func:`molgen.metrics.basic.assess`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from molgen.errors import MolgenError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.models import ModelSignature

#: The module MLflow imports to load a molgen model; the only one ``--model-uri`` accepts.
LOADER_MODULE = "molgen.mlflow_model"
#: Name of the logged model of a training run (``runs:/<run id>/model``).
MODEL_NAME = "model"
#: File name of the checkpoint inside the model (``data/checkpoint.pt``).
DATA_NAME = "checkpoint.pt"
#: Input columns besides one per conditioning property.
BASE_COLUMNS = ("n", "seed")
PARAMS = (("steps", "long"), ("guidance", "double"))
MAX_MOLECULES = 100_000  # per request row
_URI_HELP = "expected models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/model"


# --------------------------------------------------------------------------------------------------
# Signature and logging
# --------------------------------------------------------------------------------------------------


def model_signature(properties: Sequence[str]) -> ModelSignature:
    """The pyfunc signature: inputs ``n``, ``seed`` and one target column per property (any type:
    ``"6.5eV"`` or ``6.5``), params ``steps`` / ``guidance``, outputs one row per molecule."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [ColSpec("long", "n"), ColSpec("long", "seed", required=False)]
    inputs += [ColSpec(AnyType(), name, required=False) for name in properties]
    outputs = [ColSpec("long", "request"), ColSpec("string", "smiles", required=False),
               ColSpec("long", "n_atoms"), ColSpec("boolean", "valid")]
    params = ParamSchema([ParamSpec(name, dtype, None) for name, dtype in PARAMS])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


def _requirements() -> list[str]:
    import mlflow
    import torch

    from molgen import __version__

    return [f"molgen=={__version__}", f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__}"]


@contextlib.contextmanager
def _mlflow_globals(store: str, experiment_id: str | None = None) -> Iterator[None]:
    """MLflow's global tracking and registry URIs (and experiment) set to molgen's store for the block,
    then restored with their environment variables. Some MLflow paths read only the globals:
    ``Model.log`` (else the model lands in the Default experiment of ``./mlflow.db``) and the
    resolution of ``models:/NAME/VERSION`` (else the registry of ``./mlflow.db``)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    env = {k: os.environ.get(k) for k in names}
    old_tracking, old_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    if experiment_id is not None:
        os.environ["MLFLOW_EXPERIMENT_ID"] = str(experiment_id)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)
        registry_utils._registry_uri = old_registry
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_model(checkpoint: str | os.PathLike, *, run_id: str, experiment_id: str, tracking_uri: str,
              step: int = 0) -> str:
    """Log a slim copy of ``checkpoint`` (config, statistics, EMA weights; no optimizer state) as the
    MLflow model :data:`MODEL_NAME` of run ``run_id`` (in its experiment); returns the model's URI.

    This is ``mlflow.pyfunc.log_model(loader_module=..., data_path=...)`` through
    :meth:`mlflow.models.Model.log` (the function it calls), which also takes the run id: molgen never
    uses MLflow's global active run. Cheap: pip requirements are given (MLflow would otherwise load the
    model in a subprocess to infer them) and there is no input example (MLflow would sample from the
    model to validate it; the signature documents the input instead). The run's metrics at ``step``
    are attached to the model.
    """
    import mlflow
    from mlflow.models import Model

    from molgen.checkpoint import load_checkpoint, save_checkpoint
    from molgen.tracking_store import quiet_mlflow_warnings

    payload = load_checkpoint(checkpoint)
    weights = payload.get("ema") if payload.get("ema") is not None else payload["model"]
    keep = {k: payload[k] for k in ("step", "epoch", "run_id") if k in payload}
    with tempfile.TemporaryDirectory(prefix="molgen-model-") as tmp:
        slim = save_checkpoint(Path(tmp) / DATA_NAME, config=payload["config"], stats=payload["stats"],
                               model=weights, **keep)
        properties = list(payload["stats"].get("properties") or [])
        with _mlflow_globals(tracking_uri, experiment_id), quiet_mlflow_warnings(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's notice that there is no input example
            info = Model.log(
                artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id, loader_module=LOADER_MODULE,
                data_path=str(slim), signature=model_signature(properties), pip_requirements=_requirements(),
                step=int(step), tags={"molgen.family": payload["config"].get("model", "")},
            )
    return info.model_uri


# --------------------------------------------------------------------------------------------------
# The pyfunc model MLflow loads
# --------------------------------------------------------------------------------------------------


def _load_pyfunc(data_path: str) -> MolgenPyfuncModel:
    """MLflow's entry point: the checkpoint at ``data_path``, read by molgen's safe loader."""
    from molgen.generate import load_model

    return MolgenPyfuncModel(load_model(checkpoint=data_path, device=os.environ.get("MOLGEN_DEVICE", "auto")))


def _present(value: Any) -> bool:
    """Whether an optional cell holds a value (not None / NaN / NA / an empty string)."""
    import pandas as pd

    if isinstance(value, str):
        return value.strip() != ""
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # an array-like cell: let the parser report it
        return True


def _as_int(value: Any, what: str, default: int | None = None) -> int:
    if not _present(value):
        if default is None:
            raise MolgenError(f"{what} is required")
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MolgenError(f"{what} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise MolgenError(f"{what} must be an integer, got {value!r}")
    return int(number)


def _as_frame(model_input: Any) -> pd.DataFrame:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        scalar = all(not isinstance(v, (list, tuple)) and getattr(v, "ndim", 0) == 0 for v in model_input.values())
        return pd.DataFrame([model_input] if scalar else model_input)
    if isinstance(model_input, list) and all(isinstance(row, dict) for row in model_input):
        return pd.DataFrame(model_input)
    kind = type(model_input).__name__
    raise MolgenError(f"model input must be a pandas DataFrame (or a dict / list of dicts), got {kind}")


class MolgenPyfuncModel:
    """What :func:`_load_pyfunc` returns: a molgen Generator behind MLflow's ``predict``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def columns(self) -> tuple[str, ...]:
        return (*BASE_COLUMNS, *self.model.properties)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Generate molecules for each input row (module docstring); one-line MolgenError on bad input."""
        import pandas as pd

        from molgen.generate import sample_for_targets, warn_unusual_targets
        from molgen.metrics.basic import assess
        from molgen.targets import parse_targets

        frame = _as_frame(model_input)
        unknown = [str(c) for c in frame.columns if c not in self.columns]
        if unknown:
            raise MolgenError(f"unknown input column(s) {', '.join(unknown)}; expected {', '.join(self.columns)}")
        if "n" not in frame.columns:
            raise MolgenError("the input needs a column 'n' (number of molecules)")
        params = dict(params or {})
        bad = sorted(set(params) - {name for name, _ in PARAMS})
        if bad:
            raise MolgenError(f"unknown param(s) {', '.join(bad)}; expected steps, guidance")
        steps = _as_int(params["steps"], "param steps") if _present(params.get("steps")) else None
        guidance = float(params["guidance"]) if _present(params.get("guidance")) else None
        rows: list[dict[str, Any]] = []
        for i, row in enumerate(frame.to_dict("records")):
            n = _as_int(row.get("n"), f"row {i}: n")
            if not 1 <= n <= MAX_MOLECULES:
                raise MolgenError(f"row {i}: n must be between 1 and {MAX_MOLECULES}, got {n}")
            seed = _as_int(row.get("seed"), f"row {i}: seed", default=0)
            targets = [f"{p}={str(row[p]).strip()}" for p in self.model.properties if _present(row.get(p))]
            cond = parse_targets(targets)
            warn_unusual_targets(self.model, cond)
            mols = sample_for_targets(self.model, n, cond, seed=seed, steps=steps, guidance=guidance)
            for mol in mols:
                a = assess(mol)
                rows.append({"request": i, "smiles": a.smiles, "n_atoms": a.n_atoms, "valid": a.smiles is not None})
        return pd.DataFrame(rows, columns=["request", "smiles", "n_atoms", "valid"])


# --------------------------------------------------------------------------------------------------
# molgen generate --model-uri
# --------------------------------------------------------------------------------------------------


def check_model_uri(uri: str) -> str:
    """``uri`` without a trailing slash if it is a ``models:/`` or ``runs:/`` URI; else a one-line error."""
    text = (uri or "").strip().rstrip("/")
    scheme, _, rest = text.partition(":/")
    if scheme not in ("models", "runs") or not rest or rest.startswith("/") or ".." in rest.split("/"):
        raise MolgenError(f"invalid --model-uri {uri!r}: {_URI_HELP}")
    if scheme == "runs" and "/" not in rest:
        raise MolgenError(f"invalid --model-uri {uri!r}: a runs:/ URI names the model too (runs:/RUN_ID/model)")
    if scheme == "models" and not ("/" in rest or "@" in rest or rest.startswith("m-")):
        raise MolgenError(f"invalid --model-uri {uri!r}: name a version or an alias ({_URI_HELP})")
    return text


def check_mlmodel(path: str | os.PathLike, uri: str) -> str:
    """The checkpoint's path inside a downloaded model, read from its ``MLmodel`` file (YAML, parsed
    with ``safe_load``: no code); a one-line error unless the pyfunc flavor names :data:`LOADER_MODULE`
    and a relative data path inside the model."""
    import yaml

    try:
        meta = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise MolgenError(f"{uri} has an unreadable MLmodel file") from None
    flavor = (meta.get("flavors") or {}).get("python_function") if isinstance(meta, dict) else None
    loader = flavor.get("loader_module") if isinstance(flavor, dict) else None
    if loader != LOADER_MODULE:
        what = f"loader module {loader!r}" if loader else "no molgen loader module"
        raise MolgenError(f"refused {uri}: its MLmodel names {what}, not {LOADER_MODULE}; molgen loads only its "
                          "own models and never imports or unpickles what a model file names")
    data = flavor.get("data")
    parts = posixpath.normpath(data).split("/") if isinstance(data, str) and data else [".."]
    if data is None or posixpath.isabs(data) or ".." in parts or "\\" in data:
        raise MolgenError(f"refused {uri}: its MLmodel names no checkpoint inside the model (data: {data!r})")
    return posixpath.normpath(data)


def _repository(uri: str, tracking_uri: str) -> Any:
    """MLflow's artifact repository of a model URI (``models:/`` resolves through the registry)."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        return get_artifact_repository(uri, tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except MlflowException as exc:
        raise _load_error(uri, tracking_uri, exc) from None


def _load_error(uri: str, tracking_uri: str, exc: Exception) -> MolgenError:
    text = str(getattr(exc, "message", None) or getattr(exc, "strerror", None) or exc).strip().splitlines()
    return MolgenError(f"cannot load {uri} from {tracking_uri}: {text[0].rstrip('.') if text else type(exc).__name__}")


def _download(repo: Any, uri: str, rel: str, tracking_uri: str, dst: str) -> Path:
    from mlflow.exceptions import MlflowException

    from molgen.tracking_store import quiet_mlflow_warnings

    try:
        with quiet_mlflow_warnings():
            return Path(repo.download_artifacts(rel, dst))
    except (MlflowException, OSError) as exc:
        raise _load_error(uri, tracking_uri, exc) from None


@contextlib.contextmanager
def model_checkpoint(model_uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """Yield the checkpoint of an MLflow model (:func:`check_model_uri`) downloaded into a temporary
    folder removed when the block ends, after :func:`check_mlmodel` accepted its ``MLmodel`` file."""
    from molgen.tracking_store import mlflow_client, resolve_tracking_uri

    uri = check_model_uri(model_uri)
    store = resolve_tracking_uri(tracking_uri)
    if mlflow_client(store, create=False) is None:
        raise MolgenError(f"no MLflow store at {store} (give --tracking-uri or set MLFLOW_TRACKING_URI)")
    with tempfile.TemporaryDirectory(prefix="molgen-model-", ignore_cleanup_errors=True) as tmp:
        with _mlflow_globals(store):
            repo = _repository(uri, store)
            data = check_mlmodel(_download(repo, uri, "MLmodel", store, tmp), uri)
            path = _download(repo, uri, data, store, tmp)
        yield path
