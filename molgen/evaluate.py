"""``molgen evaluate``: sample from a trained run, score the samples, estimate the NLL on the test split,
and log everything into that same MLflow run — or, for a shipped model (``--pretrained NAME``), into a
new run tagged ``molgen.kind=evaluation`` and ``molgen.pretrained=NAME``. Runs whose metrics depend on
the property oracle (``eval/FD_emb`` ..., ``cond/*``) are tagged ``molgen.oracle_version`` with its
:attr:`~molgen.oracle.PropertyOracle.version`."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from molgen.data.canonical import canonical_qm9_smiles
from molgen.data.graphs import make_graphs, select_indices
from molgen.data.qm9 import load_qm9
from molgen.errors import MolgenError
from molgen.generate import load_model
from molgen.models.options import parse_sample_options
from molgen.models.base import Generator
from molgen.oracle import ORACLE_VERSION_TAG


@torch.no_grad()
def test_nll(model: Generator, *, n_molecules: int, batch_size: int = 64, seed: int = 0) -> float | None:
    """Mean negative log-likelihood (nats per molecule) of the first ``n_molecules`` test molecules.

    ``None`` when the family has no tractable likelihood or bound.
    """
    cfg = model.cfg
    data = load_qm9(cfg.data.cache_dir)
    test_idx = select_indices(data, **cfg.data.selection())["test"][:n_molecules]
    torch.manual_seed(seed)
    total, count = 0.0, 0
    for batch in DataLoader(make_graphs(data, test_idx, model.stats), batch_size=batch_size):
        ll = model.log_likelihood(batch.to(model.device))
        if ll is None:
            return None
        total += float(-ll.sum())
        count += batch.num_graphs
    return total / max(count, 1)


def suite_report(mols, *, cache_dir: str | None = None, metrics: str = "all"):
    """The ``molgen benchmark`` report (:class:`~molgen.metrics.suite.BenchmarkReport`, with its
    ``oracle_version``) against QM9 for samples, or ``None`` with a warning when fewer than two
    samples are valid (nothing to compare).

    The molecules go through the same reader as an external file (a temporary 3D SDF), so a
    family's samples and a published generator's file are scored by one code path.
    """
    import sys

    from molgen.chem.io import write_molecules
    from molgen.metrics.suite import run_benchmark

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.sdf"
        write_molecules(mols, path)
        try:
            return run_benchmark(str(path), reference="qm9", metrics=metrics, cache_dir=cache_dir, n_jobs=1)
        except MolgenError as exc:
            print(f"warning: benchmark suite skipped: {exc}", file=sys.stderr)
            return None


def suite_metrics(mols, *, cache_dir: str | None = None, metrics: str = "all") -> dict[str, float]:
    """The metrics of :func:`suite_report` (FCD, MOSES-style, oracle embeddings, ...); ``{}`` when
    it is ``None``. The oracle version behind the embedding keys is the report's ``oracle_version``."""
    report = suite_report(mols, cache_dir=cache_dir, metrics=metrics)
    return {} if report is None else {k: float(v) for k, v in report.metrics.items()}


@dataclass
class _Target:
    """The model under evaluation and where its results go: the run ``run_id`` (at its last training
    step, so ``eval/*`` sits at the end of its curves), or a new evaluation run for a shipped model."""

    model: Generator
    tracking_uri: str | None
    run_id: str | None
    pretrained: str | None
    step: int = 0
    status: str = "FINISHED"  # the run's status to restore when done

    def log(self, metrics: dict[str, float], files: Sequence[Path], tags: dict[str, str] | None = None) -> str:
        """Log ``metrics``, ``tags`` and ``files`` (under ``eval/``); opened only now, so a failed
        evaluation leaves no run behind and no run re-opened. Returns the run id."""
        from molgen.tracking import Tracker

        if self.run_id is None:
            tracker = Tracker(self.tracking_uri, "molgen", run_name=f"evaluate {self.pretrained}",
                              tags={"molgen.kind": "evaluation", "molgen.family": self.model.name,
                                    "molgen.pretrained": str(self.pretrained)})
        else:
            tracker = Tracker(self.tracking_uri, run_id=self.run_id)
        tracker.set_tags(tags or {})
        tracker.log_metrics(metrics, step=self.step)
        for path in files:
            tracker.log_artifact(path, "eval")
        tracker.finish(self.status)
        return tracker.run_id


def _open_target(run_id: str | None, pretrained: str | None, tracking_uri: str | None, device: str) -> _Target:
    """The model of ``--run`` or ``--pretrained`` (exactly one) and where its results go."""
    from molgen.tracking import get_run

    if (run_id is None) == (pretrained is None):
        raise MolgenError("give exactly one of --run RUN_ID or --pretrained NAME")
    if pretrained is not None:
        return _Target(load_model(pretrained=pretrained, device=device), tracking_uri, None, pretrained)
    run = get_run(run_id, tracking_uri)
    model = load_model(run_id, None, tracking_uri=tracking_uri, device=device)
    raw_step = run.data.params.get("train.steps", "0")
    status = run.info.status if run.info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED"
    return _Target(model, tracking_uri, run_id, None, int(raw_step) if raw_step.isdigit() else 0, status)


def evaluate_run(run_id: str | None, *, n: int, steps: int | None, nll_molecules: int, seed: int,
                 tracking_uri: str | None, device: str = "auto",
                 pretrained: str | None = None) -> tuple[dict[str, float], str]:
    """Sample ``n`` molecules from run ``run_id`` (or a shipped model), compute the metrics, log them as
    ``eval/*`` (:func:`_open_target`); returns the metrics and the run they went to."""
    from molgen.chem.io import write_molecules
    from molgen.metrics.basic import basic_metrics

    if n < 1:
        raise MolgenError("-n must be at least 1")
    target = _open_target(run_id, pretrained, tracking_uri, device)
    model = target.model
    data = load_qm9(model.cfg.data.cache_dir)
    canonical = canonical_qm9_smiles(data, model.cfg.data.cache_dir)
    train_smiles = {canonical[i] for i in select_indices(data, **model.cfg.data.selection())["train"].tolist()} - {None}

    mols = model.sample(n, steps=steps, seed=seed, progress=True)
    metrics = {f"eval/{k}": float(v) for k, v in basic_metrics(mols, train_smiles=train_smiles).items()}
    report = suite_report(mols, cache_dir=model.cfg.data.cache_dir)
    tags = {}
    if report is not None:
        for key, value in report.metrics.items():
            metrics.setdefault(f"eval/{key}", float(value))
        if report.oracle_version is not None:
            tags[ORACLE_VERSION_TAG] = report.oracle_version
    if nll_molecules > 0:
        nll = test_nll(model, n_molecules=nll_molecules, seed=seed)
        if nll is not None:
            metrics["eval/test_nll"] = nll
    with tempfile.TemporaryDirectory() as tmp:
        sdf = Path(tmp) / "eval_samples.sdf"
        write_molecules(mols, sdf)
        return metrics, target.log(metrics, [sdf], tags)


def evaluate_conditional_run(run_id: str | None, prop: str, *, n: int, steps: int | None, guidance: float | None,
                             seed: int, tracking_uri: str | None, device: str = "auto",
                             sample_opts: Sequence[str] = (), pretrained: str | None = None):
    """EDM's conditional protocol (:func:`molgen.conditional.edm_conditional`) logged into the run;
    returns the result and the run id it went to.

    Metrics: ``cond/<prop>/model`` (the model), ``cond/<prop>/naive``, ``cond/<prop>/n_atoms``,
    ``cond/<prop>/lower_bound`` (user units); the Markdown table as ``eval/conditional_<prop>.md``;
    the oracle's version as the tag ``molgen.oracle_version``.
    """
    from molgen.conditional import edm_conditional

    if n < 1:
        raise MolgenError("-n must be at least 1")
    opts = parse_sample_options(list(sample_opts))
    target = _open_target(run_id, pretrained, tracking_uri, device)
    result = edm_conditional(target.model, prop, n=n, seed=seed, steps=steps, guidance=guidance, sample_opts=opts)
    metrics = {f"cond/{result.prop}/{k}": v for k, v in result.details.items()}
    metrics[f"cond/{result.prop}/unusable"] = float(result.unusable)
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / f"conditional_{result.prop}.md"
        table.write_text(result.table() + "\n")
        tags = {ORACLE_VERSION_TAG: result.oracle_version} if result.oracle_version else {}
        return result, target.log(metrics, [table], tags)


def evaluate_gdss_run(run_id: str | None, *, n: int, seed: int, tracking_uri: str | None, device: str = "auto",
                      sample_opts: Sequence[str] = (), pretrained: str | None = None) -> tuple[dict[str, float], str]:
    """GDSS's 2D protocol (:func:`molgen.metrics.gdss.qm9_gdss_metrics`: validity without
    correction, uniqueness, novelty, FCD against the test split) on ``n`` unconditional samples,
    logged as ``gdss/<key>`` with the whole result as ``eval/gdss.json``; returns the metrics and the run id."""
    import json

    from molgen.metrics.gdss import qm9_gdss_metrics

    if n < 1:
        raise MolgenError("-n must be at least 1")
    opts = parse_sample_options(list(sample_opts))
    target = _open_target(run_id, pretrained, tracking_uri, device)
    mols = target.model.sample(n, seed=seed, progress=True, **opts)
    result = qm9_gdss_metrics(mols)
    metrics = {f"gdss/{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gdss.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return metrics, target.log(metrics, [path], tags={"molgen.gdss_test_split": str(result.get("test_split"))})
