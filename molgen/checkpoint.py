"""Checkpoints: one self-contained file (config + statistics + weights) written atomically.

A checkpoint rebuilds its model with no other file (nanoGPT's lesson): the resolved
:class:`~molgen.config.RunConfig` and :class:`~molgen.data.graphs.DatasetStats` travel with it.
A training run keeps it as ``<out_dir>/<run id>/last.pt`` and as the MLflow artifact
``checkpoints/last.pt``; :func:`locate_checkpoint` finds it from a path or a run id.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from molgen import __version__
from molgen.config import build_run_config
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.io_utils import atomic_torch_save
from molgen.safe_load import safe_torch_load, with_integrity

FORMAT = "molgen-checkpoint"
FORMAT_VERSION = 2  # 2: an integrity digest of the weights (version 1 files load without the check)
#: the entries of a checkpoint covered by its integrity digest
WEIGHT_KEYS = ("model", "ema")
#: The MLflow artifact folder and the file name of a run's checkpoint.
CHECKPOINT_ARTIFACT = "checkpoints"
CHECKPOINT_NAME = "last.pt"
#: What a run id may look like (MLflow's are hex strings); it becomes a path component.
_RUN_ID = re.compile(r"[A-Za-z0-9_-]+")


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write ``state`` (config, stats, model, ema, optimizer, ...) atomically to ``path``."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "molgen_version": __version__, **state}
    atomic_torch_save(with_integrity(payload, WEIGHT_KEYS), path)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (tensors and plain data only, weights checked against their
    digest: :mod:`molgen.safe_load`); one-line :class:`MolgenError` if missing, corrupted or refused."""
    path = Path(path)
    payload = safe_torch_load(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MolgenError(f"not a molgen checkpoint: {path}")
    for key in ("config", "stats", "model"):
        if key not in payload:
            raise MolgenError(f"incomplete checkpoint (no '{key}'): {path}")
    return payload


def model_from_checkpoint(payload: dict[str, Any], *, use_ema: bool = True):
    """Rebuild the Generator of a checkpoint (EMA weights by default), in eval mode on CPU."""
    from molgen.models.registry import get_family

    config = payload["config"]
    family = get_family(config["model"])
    cfg = build_run_config(config, family.config_cls)
    stats = DatasetStats.from_dict(payload["stats"])
    model = family(cfg, stats)
    weights = payload.get("ema") if use_ema and payload.get("ema") is not None else payload["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise MolgenError("checkpoint weights do not match the model its config describes") from None
    return model.eval()


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a plain name (letters, digits, ``_``, ``-``); else a one-line error, so
    that it can never walk out of the outputs folder as a path component."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise MolgenError(f"invalid run id {str(run_id)!r}: expected letters, digits, '_' or '-' (an MLflow run id)")
    return run_id


def run_checkpoint_path(run_id: str, out_dir: str | os.PathLike = "outputs") -> Path:
    """Where a training run keeps its checkpoint locally: ``<out_dir>/<run_id>/last.pt``."""
    return Path(out_dir) / check_run_id(run_id) / CHECKPOINT_NAME


def parse_checkpoint_ref(ref: str) -> tuple[Path | None, str | None]:
    """``(path, None)`` or ``(None, run_id)`` for a value that may be either (``--resume``).

    An existing file is a path; so is anything that looks like one (a ``.pt`` suffix or a path
    separator), which then gives ``checkpoint not found``; everything else must be a run id.
    """
    path = Path(ref)
    if path.is_file() or path.suffix == ".pt" or "/" in ref or os.sep in ref:
        return path, None
    return None, check_run_id(ref)


@contextlib.contextmanager
def locate_checkpoint(path: str | os.PathLike | None = None, run_id: str | None = None, *,
                      out_dir: str | os.PathLike = "outputs", tracking_uri: str | None = None) -> Iterator[Path]:
    """Yield the local file of a checkpoint: ``path`` itself, else the run's local copy
    (:func:`run_checkpoint_path`), else the run's MLflow artifact ``checkpoints/last.pt`` downloaded
    into a temporary folder that is removed when the block ends (load the payload inside it).

    Give exactly one of ``path`` and ``run_id``. A missing ``path`` is left to :func:`load_checkpoint`
    (``checkpoint not found``); an invalid run id is a one-line :class:`MolgenError`.
    """
    if (path is None) == (run_id is None):
        raise ValueError("give exactly one of path and run_id")
    if path is not None:
        yield Path(path)
        return
    local = run_checkpoint_path(run_id, out_dir)
    if local.is_file():
        yield local
        return
    from molgen import tracking

    with tempfile.TemporaryDirectory(prefix="molgen-ckpt-", ignore_cleanup_errors=True) as tmp:
        yield tracking.download_artifact(run_id, f"{CHECKPOINT_ARTIFACT}/{CHECKPOINT_NAME}", tracking_uri, tmp)
