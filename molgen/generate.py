"""``molgen generate``: load a trained model, sample for targets, write the molecules, score them."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from molgen.checkpoint import load_checkpoint, model_from_checkpoint
from molgen.errors import MolgenError
from molgen.models.base import Generator

SUPPORTED_OUTPUTS = (".sdf", ".xyz", ".smi", ".csv")


def find_checkpoint(run_id: str | None, checkpoint: str | None, tracking_uri: str | None,
                    out_dir: str = "outputs", pretrained: str | None = None) -> Path:
    """The checkpoint of ``--checkpoint``, of ``--pretrained`` (shipped, :mod:`molgen.zoo`) or of
    ``--run`` (local copy first, else the MLflow artifact)."""
    from molgen.tracking import download_artifact
    from molgen.train import CHECKPOINT_ARTIFACT, CHECKPOINT_NAME
    from molgen.zoo import pretrained_checkpoint

    if sum(x is not None for x in (run_id, checkpoint, pretrained)) != 1:
        raise MolgenError("give exactly one of --run RUN_ID, --checkpoint PATH or --pretrained NAME")
    if checkpoint is not None:
        return Path(checkpoint)
    if pretrained is not None:
        return pretrained_checkpoint(pretrained)
    local = Path(out_dir) / run_id / CHECKPOINT_NAME
    if local.is_file():
        return local
    dst = Path(tempfile.mkdtemp(prefix="molgen-ckpt-"))
    return download_artifact(run_id, f"{CHECKPOINT_ARTIFACT}/{CHECKPOINT_NAME}", tracking_uri, dst)


def load_model(run_id: str | None = None, checkpoint: str | None = None, *, tracking_uri: str | None = None,
               device: str = "auto", pretrained: str | None = None) -> Generator:
    path = find_checkpoint(run_id, checkpoint, tracking_uri, pretrained=pretrained)
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


def parse_sample_options(items: list[str]) -> dict[str, Any]:
    """``["temperature=0.8", "sampler=ode"]`` -> keyword options for the family's ``sample``."""
    import yaml

    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise MolgenError(f"malformed --sample-opt '{item}': expected KEY=VALUE, e.g. temperature=0.8")
        try:
            opts[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            opts[key.strip()] = raw
    return opts


def call_sample(model: Generator, n: int, **kwargs: Any) -> list:
    """``model.sample`` with a one-line error for options the family does not take."""
    import inspect

    params = inspect.signature(model.sample).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            opts = ", ".join(k for k in params if k not in ("n",))
            raise MolgenError(f"family '{model.name}' does not take sampler option(s) {', '.join(unknown)} "
                              f"(it takes: {opts})")
    return model.sample(n, **kwargs)


def generate_molecules(*, run_id: str | None, checkpoint: str | None, n: int, targets: list[str],
                       n_atoms: int | None, guidance: float | None, steps: int | None, seed: int,
                       device: str, tracking_uri: str | None, out: str, sample_opts: list[str] = (),
                       scaffold: str | None = None, tol: list[str] = (),
                       pretrained: str | None = None) -> dict[str, float]:
    """Sample ``n`` molecules and write them to ``out``; returns validity/uniqueness/stability and,
    for targets, the oracle's MAE per property and the hit rate (:mod:`molgen.conditional`)."""
    from molgen.chem.io import write_molecules
    from molgen.conditional import parse_tolerances, score_targets
    from molgen.metrics.basic import basic_metrics
    from molgen.oracle import oracle_file
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
    model = load_model(run_id, checkpoint, tracking_uri=tracking_uri, device=device, pretrained=pretrained)
    warn_unusual_targets(model, cond)
    if n_atoms is None and cond:  # atom counts from p(N | targets) of the training data
        unknown = [p for p in cond if p not in model.properties]
        if not unknown:
            n_atoms = model.stats.sample_n_atoms_given(n, cond, torch.Generator().manual_seed(seed))
    mols = call_sample(model, n, cond=cond or None, n_atoms=n_atoms, steps=steps, guidance=guidance, seed=seed,
                       progress=True, **opts)
    report = dict(basic_metrics(mols))
    if cond:
        if oracle_file().is_file():
            report.update(score_targets(mols, cond, tol=tolerances))
        else:
            print(f"warning: no oracle weights at {oracle_file()}; targets are not scored", file=sys.stderr)
    write_molecules(mols, out)
    return report
