"""``molgen generate``: load a trained model, sample for targets, write the molecules, score them."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from molgen.checkpoint import load_checkpoint, model_from_checkpoint
from molgen.errors import MolgenError
from molgen.models.base import Generator

SUPPORTED_OUTPUTS = (".sdf", ".xyz", ".smi")


def find_checkpoint(run_id: str | None, checkpoint: str | None, tracking_uri: str | None,
                    out_dir: str = "outputs") -> Path:
    """The checkpoint of ``--checkpoint`` or of ``--run`` (local copy first, else the MLflow artifact)."""
    from molgen.tracking import download_artifact
    from molgen.train import CHECKPOINT_ARTIFACT, CHECKPOINT_NAME

    if (run_id is None) == (checkpoint is None):
        raise MolgenError("give exactly one of --run RUN_ID or --checkpoint PATH")
    if checkpoint is not None:
        return Path(checkpoint)
    local = Path(out_dir) / run_id / CHECKPOINT_NAME
    if local.is_file():
        return local
    dst = Path(tempfile.mkdtemp(prefix="molgen-ckpt-"))
    return download_artifact(run_id, f"{CHECKPOINT_ARTIFACT}/{CHECKPOINT_NAME}", tracking_uri, dst)


def load_model(run_id: str | None = None, checkpoint: str | None = None, *, tracking_uri: str | None = None,
               device: str = "auto") -> Generator:
    path = find_checkpoint(run_id, checkpoint, tracking_uri)
    model = model_from_checkpoint(load_checkpoint(path))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return model.to(torch.device(device))
    except (RuntimeError, AssertionError) as exc:
        raise MolgenError(f"cannot use device '{device}': {exc}") from None


def warn_unusual_targets(model: Generator, cond: dict[str, float]) -> None:
    """Warn (one line each) about targets outside the central 99 % of the model's training data."""
    stats = model.stats
    for name, value in cond.items():
        if name in stats.properties and stats.low:
            j = stats.properties.index(name)
            if not stats.low[j] <= value <= stats.high[j]:
                print(f"warning: target {name}={value:g} is outside the central 99% of the training data "
                      f"[{stats.low[j]:.4g}, {stats.high[j]:.4g}]; expect poor accuracy", file=sys.stderr)


def generate_molecules(*, run_id: str | None, checkpoint: str | None, n: int, targets: list[str],
                       n_atoms: int | None, guidance: float | None, steps: int | None, seed: int,
                       device: str, tracking_uri: str | None, out: str) -> dict[str, float]:
    """Sample ``n`` molecules and write them to ``out``; returns validity/uniqueness/stability."""
    from molgen.chem.io import write_molecules
    from molgen.metrics.basic import basic_metrics
    from molgen.targets import parse_targets

    if Path(out).suffix.lower() not in SUPPORTED_OUTPUTS:
        raise MolgenError(f"--out must end in one of {', '.join(SUPPORTED_OUTPUTS)}, got '{out}'")
    if n < 1:
        raise MolgenError("-n must be at least 1")
    cond = parse_targets(targets)
    model = load_model(run_id, checkpoint, tracking_uri=tracking_uri, device=device)
    warn_unusual_targets(model, cond)
    mols = model.sample(n, cond=cond or None, n_atoms=n_atoms, steps=steps, guidance=guidance, seed=seed,
                        progress=True)
    write_molecules(mols, out)
    return basic_metrics(mols)
