"""Checkpoints: one self-contained file (config + statistics + weights) written atomically.

A checkpoint rebuilds its model with no other file (nanoGPT's lesson): the resolved
:class:`~molgen.config.RunConfig` and :class:`~molgen.data.graphs.DatasetStats` travel with it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from molgen import __version__
from molgen.config import build_run_config
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.io_utils import atomic_torch_save

FORMAT = "molgen-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write ``state`` (config, stats, model, ema, optimizer, ...) atomically to ``path``."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "molgen_version": __version__, **state}
    atomic_torch_save(payload, path)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; one-line :class:`MolgenError` if missing or corrupted."""
    path = Path(path)
    if not path.is_file():
        raise MolgenError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError, AttributeError):
        raise MolgenError(f"corrupted or unreadable checkpoint: {path}") from None
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
