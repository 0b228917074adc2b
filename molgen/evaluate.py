"""``molgen evaluate``: sample from a trained run, score the samples, estimate the NLL on the test split,
and log everything into that same MLflow run."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from molgen.data.canonical import canonical_qm9_smiles
from molgen.data.graphs import make_graphs, select_indices
from molgen.data.qm9 import load_qm9
from molgen.errors import MolgenError
from molgen.generate import load_model, parse_sample_options
from molgen.models.base import Generator


@torch.no_grad()
def test_nll(model: Generator, *, n_molecules: int, batch_size: int = 64, seed: int = 0) -> float | None:
    """Mean negative log-likelihood (nats per molecule) of the first ``n_molecules`` test molecules.

    ``None`` when the family has no tractable likelihood or bound.
    """
    cfg = model.cfg
    data = load_qm9(cfg.data.cache_dir)
    test_idx = select_indices(data, cfg.data)["test"][:n_molecules]
    torch.manual_seed(seed)
    total, count = 0.0, 0
    for batch in DataLoader(make_graphs(data, test_idx, model.stats), batch_size=batch_size):
        ll = model.log_likelihood(batch.to(model.device))
        if ll is None:
            return None
        total += float(-ll.sum())
        count += batch.num_graphs
    return total / max(count, 1)


def suite_metrics(mols, *, cache_dir: str | None = None, metrics: str = "all") -> dict[str, float]:
    """The ``molgen benchmark`` suite against QM9 (FCD, MOSES-style, oracle embeddings, ...) for samples.

    The molecules go through the same reader as an external file (a temporary 3D SDF), so a
    family's samples and a published generator's file are scored by one code path. Returns ``{}``
    with a warning when fewer than two samples are valid (nothing to compare).
    """
    import sys

    from molgen.chem.io import write_molecules
    from molgen.metrics.suite import run_benchmark

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.sdf"
        write_molecules(mols, path)
        try:
            report = run_benchmark(str(path), reference="qm9", metrics=metrics, cache_dir=cache_dir, n_jobs=1)
        except MolgenError as exc:
            print(f"warning: benchmark suite skipped: {exc}", file=sys.stderr)
            return {}
    return {k: float(v) for k, v in report.metrics.items()}


def evaluate_run(run_id: str, *, n: int, steps: int | None, nll_molecules: int, seed: int,
                 tracking_uri: str | None, device: str = "auto") -> dict[str, float]:
    """Sample ``n`` molecules from run ``run_id``, compute the metrics, log them as ``eval/*`` into the run."""
    from molgen.chem.io import write_molecules
    from molgen.metrics.basic import basic_metrics
    from molgen.tracking import Tracker, get_run

    if n < 1:
        raise MolgenError("-n must be at least 1")
    run = get_run(run_id, tracking_uri)
    model = load_model(run_id, None, tracking_uri=tracking_uri, device=device)
    data = load_qm9(model.cfg.data.cache_dir)
    canonical = canonical_qm9_smiles(data, model.cfg.data.cache_dir)
    train_smiles = {canonical[i] for i in select_indices(data, model.cfg.data)["train"].tolist()} - {None}

    mols = model.sample(n, steps=steps, seed=seed, progress=True)
    metrics = {f"eval/{k}": float(v) for k, v in basic_metrics(mols, train_smiles=train_smiles).items()}
    for key, value in suite_metrics(mols, cache_dir=model.cfg.data.cache_dir).items():
        metrics.setdefault(f"eval/{key}", value)
    if nll_molecules > 0:
        nll = test_nll(model, n_molecules=nll_molecules, seed=seed)
        if nll is not None:
            metrics["eval/test_nll"] = nll
    # log at the run's last training step, so eval/* sits at the end of the run's curves
    raw_step = run.data.params.get("train.steps", "0")
    step = int(raw_step) if raw_step.isdigit() else 0
    tracker = Tracker(tracking_uri, run_id=run_id)
    tracker.log_metrics(metrics, step=step)
    with tempfile.TemporaryDirectory() as tmp:
        sdf = Path(tmp) / "eval_samples.sdf"
        write_molecules(mols, sdf)
        tracker.log_artifact(sdf, "eval")
    tracker.finish(run.info.status if run.info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
    return metrics


def evaluate_conditional_run(run_id: str, prop: str, *, n: int, steps: int | None, guidance: float | None,
                             seed: int, tracking_uri: str | None, device: str = "auto",
                             sample_opts: Sequence[str] = ()):
    """EDM's conditional protocol (:func:`molgen.conditional.edm_conditional`) logged into the run.

    Metrics: ``cond/<prop>/mae`` (the model), ``cond/<prop>/naive``, ``cond/<prop>/n_atoms``,
    ``cond/<prop>/lower_bound`` (user units); the Markdown table as ``eval/conditional_<prop>.md``.
    """
    from molgen.conditional import edm_conditional
    from molgen.tracking import Tracker, get_run

    if n < 1:
        raise MolgenError("-n must be at least 1")
    run = get_run(run_id, tracking_uri)
    model = load_model(run_id, None, tracking_uri=tracking_uri, device=device)
    opts = parse_sample_options(list(sample_opts))
    result = edm_conditional(model, prop, n=n, seed=seed, steps=steps, guidance=guidance, sample_opts=opts)
    metrics = {f"cond/{result.prop}/{k}": v for k, v in result.details.items()}
    metrics[f"cond/{result.prop}/unusable"] = float(result.unusable)
    raw_step = run.data.params.get("train.steps", "0")
    tracker = Tracker(tracking_uri, run_id=run_id)
    tracker.log_metrics(metrics, step=int(raw_step) if raw_step.isdigit() else 0)
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / f"conditional_{result.prop}.md"
        table.write_text(result.table() + "\n")
        tracker.log_artifact(table, "eval")
    tracker.finish(run.info.status if run.info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
    return result
