"""``molgen generate``: load a trained model, sample for targets, write the molecules, score them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, ContextManager

import torch

from molgen.checkpoint import load_checkpoint, locate_checkpoint, model_from_checkpoint
from molgen.errors import MolgenError
from molgen.models.base import Generator
from molgen.models.options import parse_sample_options

SUPPORTED_OUTPUTS = (".sdf", ".xyz", ".smi", ".csv")


def find_checkpoint(run_id: str | None, checkpoint: str | None, tracking_uri: str | None,
                    out_dir: str = "outputs", pretrained: str | None = None,
                    model_uri: str | None = None) -> ContextManager[Path]:
    """A context manager yielding the checkpoint file of ``--checkpoint``, of ``--pretrained``
    (shipped, :mod:`molgen.zoo`), of ``--model-uri`` (an MLflow model whose loader is molgen's,
    downloaded: :func:`molgen.mlflow_model.model_checkpoint`) or of ``--run`` (local copy first, else
    the MLflow artifact in a temporary folder removed when the block ends; see
    :func:`molgen.checkpoint.locate_checkpoint`)."""
    from molgen.zoo import pretrained_checkpoint

    if sum(x is not None for x in (run_id, checkpoint, pretrained, model_uri)) != 1:
        raise MolgenError("give exactly one of --run RUN_ID, --checkpoint PATH, --pretrained NAME or --model-uri URI")
    if model_uri is not None:
        from molgen.mlflow_model import model_checkpoint

        return model_checkpoint(model_uri, tracking_uri)
    if pretrained is not None:
        return locate_checkpoint(path=pretrained_checkpoint(pretrained))
    if checkpoint is not None:
        return locate_checkpoint(path=checkpoint)
    return locate_checkpoint(run_id=run_id, out_dir=out_dir, tracking_uri=tracking_uri)


def load_model(run_id: str | None = None, checkpoint: str | None = None, *, tracking_uri: str | None = None,
               device: str = "auto", pretrained: str | None = None, model_uri: str | None = None) -> Generator:
    """The Generator of a checkpoint (see :func:`find_checkpoint`), on ``device`` (``auto``: CUDA if any)."""
    with find_checkpoint(run_id, checkpoint, tracking_uri, pretrained=pretrained, model_uri=model_uri) as path:
        payload = load_checkpoint(path)
    model = model_from_checkpoint(payload)
    from molgen.distributed import resolve_device

    device = str(resolve_device(device))
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


def sample_for_targets(model: Generator, n: int, cond: dict[str, float], *, n_atoms: Any = None, seed: int = 0,
                       progress: bool = False, **options: Any) -> list:
    """``model.sample`` for targets (user units); without ``n_atoms``, atom counts are drawn from
    p(N | targets) of the training data when the model knows every target property."""
    if n_atoms is None and cond and all(p in model.properties for p in cond):
        n_atoms = model.stats.sample_n_atoms_given(n, cond, torch.Generator().manual_seed(seed))
    return model.sample(n, cond=cond or None, n_atoms=n_atoms, seed=seed, progress=progress, **options)


def generate_molecules(*, run_id: str | None, checkpoint: str | None, n: int, targets: list[str],
                       n_atoms: int | None, guidance: float | None, steps: int | None, seed: int,
                       device: str, tracking_uri: str | None, out: str, sample_opts: list[str] = (),
                       scaffold: str | None = None, tol: list[str] = (),
                       pretrained: str | None = None, model_uri: str | None = None) -> dict[str, float]:
    """Sample ``n`` molecules and write them to ``out``; returns validity/uniqueness/stability and,
    for targets, the oracle's MAE per property and the hit rate (:mod:`molgen.conditional`), after
    printing which oracle (file and version) scored them."""
    from molgen.chem.io import write_molecules
    from molgen.conditional import parse_tolerances, score_targets
    from molgen.metrics.basic import basic_metrics
    from molgen.oracle import load_oracle, oracle_file
    from molgen.targets import parse_targets

    if Path(out).suffix.lower() not in SUPPORTED_OUTPUTS:
        raise MolgenError(f"--out must end in one of {', '.join(SUPPORTED_OUTPUTS)}, got '{out}'")
    if n < 1:
        raise MolgenError("-n must be at least 1")
    cond = parse_targets(targets)
    tolerances = parse_tolerances(tol)
    opts = parse_sample_options(list(sample_opts))
    if scaffold is not None:
        opts["scaffold"] = scaffold
    model = load_model(run_id, checkpoint, tracking_uri=tracking_uri, device=device, pretrained=pretrained,
                       model_uri=model_uri)
    warn_unusual_targets(model, cond)
    mols = sample_for_targets(model, n, cond, n_atoms=n_atoms, steps=steps, guidance=guidance, seed=seed,
                              progress=True, **opts)
    report = dict(basic_metrics(mols))
    if cond:
        if oracle_file().is_file():
            oracle = load_oracle()
            report.update(score_targets(mols, cond, tol=tolerances, oracle=oracle))
            print(f"targets scored by oracle version {oracle.version} ({oracle_file()})")
        else:
            print(f"warning: no oracle weights at {oracle_file()}; targets are not scored", file=sys.stderr)
    write_molecules(mols, out)
    return report
