"""``molgen train --resume``: continue a run from its checkpoint, or branch it into a new run.

A resumed run takes its config from the checkpoint; ``--steps`` and ``--device`` apply, ``--set``
keys branch it (same state, changed config, a new MLflow run tagged ``molgen.branched_from``), and
``--chunk-steps N`` ends the chunk after N more steps with the run's schedule unchanged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from molgen.checkpoint import load_checkpoint, locate_checkpoint, parse_checkpoint_ref
from molgen.config import build_run_config, deep_update, validate
from molgen.errors import MolgenError
from molgen.models.registry import get_family
from molgen.train import Trainer, TrainResult


def resolve_resume(resume: str, out_dir: str, tracking_uri: str | None) -> contextlib.AbstractContextManager[Path]:
    """``--resume`` accepts a checkpoint path or an MLflow run id (local copy first, else the artifact);
    a context manager yielding the file (see :func:`molgen.checkpoint.locate_checkpoint`)."""
    path, run_id = parse_checkpoint_ref(resume)
    return locate_checkpoint(path, run_id, out_dir=out_dir, tracking_uri=tracking_uri)


def resume_training(resume: str, *, tracking_uri: str | None = None, steps: int | None = None,
                    device: str | None = None, overrides: dict[str, Any] | None = None,
                    chunk_steps: int | None = None, out_dir: str = "outputs", progress: bool = True,
                    log=print) -> TrainResult:
    """Continue a run from its checkpoint (path or MLflow run id) into the same MLflow run.

    With ``overrides`` (``--set`` keys) the state — weights, EMA, optimizer, step — continues in a
    new run with the changed config (tag ``molgen.branched_from``): a side-by-side branch of a
    campaign, e.g. another time law or learning rate from the same point. ``chunk_steps`` ends this
    chunk after that many more steps (the run's schedule is unchanged), e.g. to compare branches at
    equal steps."""
    with resolve_resume(resume, out_dir, tracking_uri) as path:
        payload = load_checkpoint(path)
    family = get_family(payload["config"]["model"])
    data = payload["config"]
    if overrides:
        if "model" in overrides or "backbone" in overrides:
            raise MolgenError("a branch keeps the checkpoint's network: --set model.../backbone... do not apply "
                              "with --resume")
        data = deep_update(data, overrides)
        payload = {**payload, "run_id": None, "branched_from": payload.get("run_id") or str(resume)}
    cfg = build_run_config(data, family.config_cls)
    if steps is not None:
        cfg.train.steps = steps
    if device is not None:
        cfg.train.device = device
    validate(cfg)  # --steps 0 or negative: one line
    if "ema_state" not in payload or "optimizer" not in payload:
        raise MolgenError("this checkpoint has no optimizer state (a shipped model?); it cannot be resumed")
    done = int(payload.get("step", 0))
    if cfg.train.epochs is None and cfg.train.steps <= done:
        raise MolgenError(f"nothing to train: the checkpoint is at step {done} and the run's target is step "
                          f"{cfg.train.steps} (give --steps N with N > {done})")
    if chunk_steps is not None and chunk_steps < 1:
        raise MolgenError(f"--chunk-steps must be positive, got {chunk_steps}")
    return Trainer(cfg, tracking_uri=tracking_uri, resume=payload, progress=progress, log=log,
                   chunk_steps=chunk_steps).run()
