"""``molgen benchmark``: every metric of the field for a file of molecules, against a reference set.

References:
- ``moses``: MOSES's own protocol and keys (:func:`molgen.metrics.moses_suite.moses_metrics`).
- ``qm9``: QM9's test split as reference (FCD, SNN, Frag, Scaf, property distances), its training
  split for novelty, plus EDM's 3D metrics (atom / molecule stability) for 3D inputs.
- a file: any SMILES/SDF/XYZ file as reference, with ``--train FILE`` for novelty.

Invalid input molecules are counted (``valid`` and ``invalid/<reason>``), never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rdkit import Chem

from molgen.data.readers import MoleculeRecord, ReadResult, canonical_smiles, read_molecules
from molgen.errors import MolgenError

SMILES_FORMATS = ("smiles", "csv")


@dataclass
class BenchmarkReport:
    """The flat metric dict plus what was read, for printing and logging."""

    metrics: dict[str, float]
    read: ReadResult
    reference: str
    samples_smiles: list[str] = field(default_factory=list)
    sample_properties: dict[str, list[float]] = field(default_factory=dict)
    reference_properties: dict[str, list[float]] = field(default_factory=dict)


def _valid(records: Sequence[MoleculeRecord]) -> list[MoleculeRecord]:
    return [r for r in records if r.mol is not None]


def _identity(records: Sequence[MoleculeRecord]) -> list[str]:
    """EDM's molecule identity: canonical, non-isomeric SMILES of the largest fragment."""
    return [s for s in canonical_smiles(records, largest_fragment_only=True, isomeric=False) if s]


def _reference_smiles(reference: str, train: str | None, cache_dir: str | None) -> tuple[str, list[str], set[str] | None]:
    """(name, reference SMILES, training identities or None) for ``qm9`` or a file."""
    if reference == "qm9":
        from molgen.data.canonical import canonical_qm9_smiles
        from molgen.data.qm9 import edm_splits, load_qm9

        data = load_qm9(cache_dir)
        canonical = canonical_qm9_smiles(data, cache_dir)
        splits = edm_splits(data.num_molecules)
        test = [canonical[i] for i in splits["test"].tolist() if canonical[i]]
        train_ids = {canonical[i] for i in splits["train"].tolist()} - {None}
        return "qm9_test", test, train_ids
    ref = read_molecules(reference)
    ref_smiles = [Chem.MolToSmiles(r.mol) for r in _valid(ref.records)]
    if not ref_smiles:
        raise MolgenError(f"reference file {reference} holds no valid molecule")
    train_ids = None
    if train is not None:
        train_ids = set(_identity(_valid(read_molecules(train).records)))
    return f"file_{Path(reference).stem}", ref_smiles, train_ids


def run_benchmark(
    path: str,
    *,
    reference: str = "qm9",
    train: str | None = None,
    n: int | None = None,
    column: str | None = None,
    n_jobs: int = 2,
    cache_dir: str | None = None,
) -> BenchmarkReport:
    """Read ``path`` and compute the metric suite against ``reference`` (``qm9``, ``moses`` or a file)."""
    read = read_molecules(path, column=column)
    records = read.records[:n] if n is not None else read.records
    if n is not None and n < 1:
        raise MolgenError("--n must be at least 1")
    total = len(records)
    valid = _valid(records)
    metrics: dict[str, float] = {"n": float(total), "valid": len(valid) / total}
    reasons: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            reasons[r.error] = reasons.get(r.error, 0) + 1
    for reason, count in sorted(reasons.items()):
        metrics[f"invalid/{reason}"] = float(count)

    if reference == "moses":
        from molgen.metrics.moses_suite import moses_metrics

        if train is not None:
            raise MolgenError("--train does not apply to --reference moses (it uses the MOSES training set)")
        smiles = [r.source if read.format in SMILES_FORMATS or r.mol is None else Chem.MolToSmiles(r.mol)
                  for r in records]
        metrics.update(moses_metrics(smiles, n_jobs=n_jobs, cache_dir=cache_dir))
        return BenchmarkReport(metrics, read, reference, smiles)

    from molgen.metrics import moses as M
    from molgen.metrics.fcd import fcd_stats
    from molgen.metrics.moses_suite import compute_features, reference_stats, score_against

    name, ref_smiles, train_ids = _reference_smiles(reference, train, cache_dir)
    if len(valid) < 2:
        raise MolgenError(f"only {len(valid)} of {total} molecules in {path} are valid; nothing to compare")
    gen_smiles = [Chem.MolToSmiles(r.mol) for r in valid]
    ids = _identity(valid)
    metrics["unique"] = len(set(ids)) / max(len(ids), 1)
    metrics["valid_unique"] = metrics["valid"] * metrics["unique"]
    if train_ids is not None:
        distinct = set(ids)
        metrics["novel"] = len(distinct - train_ids) / max(len(distinct), 1)
    gen = compute_features(gen_smiles, n_jobs=n_jobs)
    ref = reference_stats(ref_smiles, name=name, n_jobs=n_jobs, cache_dir=cache_dir)
    scores = score_against(gen, ref, fcd_stats(gen.canonical))
    for key in ("FCD", "SNN", "Frag", "Scaf"):
        metrics[f"{key}/Test"] = scores[key]
    metrics["IntDiv"], metrics["IntDiv2"] = M.internal_diversities(gen.fps)
    for prop in M.PROPERTY_NAMES:
        metrics[prop] = scores[prop]

    mols3d = [r.mol3d for r in records if r.mol3d is not None]
    if read.is_3d and mols3d:
        from molgen.chem.stability import stability_counts

        metrics.update(stability_counts(mols3d))
    return BenchmarkReport(
        metrics, read, reference, gen_smiles,
        sample_properties={k: list(map(float, v)) for k, v in gen.properties.items()},
        reference_properties={k: list(map(float, v)) for k, v in ref.properties.items()},
    )
