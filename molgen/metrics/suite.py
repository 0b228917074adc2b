"""``molgen benchmark``: every metric of the field for a file of molecules, against a reference set.

References:
- ``moses``: MOSES's own protocol and keys (:func:`molgen.metrics.moses_suite.moses_metrics`).
- ``qm9``: QM9's test split as reference (FCD, SNN, Frag, Scaf, property distances), its training
  split for novelty, plus EDM's 3D metrics (atom / molecule stability) for 3D inputs.
- a file: any SMILES/SDF/XYZ file as reference, with ``--train FILE`` for novelty.

Invalid input molecules are counted (``valid`` and ``invalid/<reason>``), never dropped silently.

Metric groups (``metrics=``, the CLI's ``--metrics``; ``n``, ``valid`` and ``invalid/*`` always):

- ``basic``: uniqueness, novelty (``unique``, ``valid_unique``, ``novel``; MOSES: ``unique@1000``,
  ``unique@10000``, ``Novelty``), ``valid_connected`` (the fraction of records that are valid and
  one connected fragment), ``valid_unique_novel`` (``valid × unique × novel``: the fraction of
  records that are valid, the first of their identity and not in the training set; only with
  training molecules) and, for 3D input, EDM's atom / molecule stability;
- ``moses``: SNN, Frag, Scaf, IntDiv / IntDiv2, Filters and the Wasserstein-1 distances of logP,
  SA, QED, weight (under MOSES's keys ``logP`` ... and again as ``W1/logP`` ...);
- ``fcd``: Fréchet ChemNet Distance;
- ``embedding``: distances in the property oracle's learned space and ``W1/<prop>`` of its
  predictions (:mod:`molgen.metrics.oracle_metrics`), for 3D input against a 3D reference only;
- ``prdc``: precision / recall / density / coverage (``precision_emb`` ...) with k-NN balls in the
  same oracle space (:mod:`molgen.metrics.prdc`), same inputs as ``embedding`` (features shared);
- ``geometry``: bond-length / angle / torsion W1 per type and atom / bond-type total variation
  (``geometry/*``, :mod:`molgen.metrics.geometry`), for 3D input against a 3D reference only;
- ``physics`` (opt-in, not part of ``all``): MMFF94 energy, strain and relaxation RMSD of each valid
  molecule and PoseBusters' molecule-level checks (``physics/*``, :mod:`molgen.metrics.physics`),
  for 3D input, whatever the reference.

A group that is not requested is not computed; one that was named explicitly (not through ``all``)
but cannot apply to the input or reference is listed in :attr:`BenchmarkReport.skipped` with why.
When the ``embedding`` or ``prdc`` group ran, the report names the oracle that produced it:
:attr:`BenchmarkReport.oracle_version` (the key ``oracle_version`` of
:meth:`BenchmarkReport.as_json`, MLflow tag ``molgen.oracle_version``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rdkit import Chem

from molgen.data.readers import MoleculeRecord, ReadResult, canonical_smiles, read_molecules
from molgen.errors import MolgenError

SMILES_FORMATS = ("smiles", "csv")


@dataclass
class BenchmarkReport:
    """The flat metric dict plus what was read, for printing and logging.

    ``oracle_version``: :attr:`molgen.oracle.PropertyOracle.version` of the oracle behind the
    ``embedding`` keys, ``None`` when that group did not run.
    """

    metrics: dict[str, float]
    read: ReadResult
    reference: str
    samples_smiles: list[str] = field(default_factory=list)
    sample_properties: dict[str, list[float]] = field(default_factory=dict)
    reference_properties: dict[str, list[float]] = field(default_factory=dict)
    oracle_version: str | None = None
    #: metric groups that could not be computed, with why (e.g. fewer than 2 valid molecules)
    skipped: dict[str, str] = field(default_factory=dict)
    #: ``(samples, reference)`` :class:`~molgen.metrics.geometry_features.GeometryFeatures` when the
    #: ``geometry`` group ran (for plots: ``molgen compare``'s histograms)
    geometry: tuple | None = None

    def as_json(self) -> dict[str, float | str]:
        """The metrics plus ``oracle_version`` when an oracle-dependent group ran and ``skipped/<group>``
        reasons (the JSON report)."""
        out: dict[str, float | str] = dict(self.metrics)
        if self.oracle_version is not None:
            out["oracle_version"] = self.oracle_version
        out.update({f"skipped/{group}": why for group, why in self.skipped.items()})
        return out


def _valid(records: Sequence[MoleculeRecord]) -> list[MoleculeRecord]:
    return [r for r in records if r.mol is not None]


def _identity(records: Sequence[MoleculeRecord]) -> list[str]:
    """EDM's molecule identity: canonical, non-isomeric SMILES of the largest fragment."""
    return [s for s in canonical_smiles(records, largest_fragment_only=True, isomeric=False) if s]


#: The metric groups of :func:`run_benchmark`, in report order (``all`` means these).
METRIC_GROUPS: tuple[str, ...] = ("basic", "moses", "fcd", "embedding", "prdc", "geometry")
#: Groups computed only when named (``all,physics``): seconds per hundred molecules.
OPT_IN_GROUPS: tuple[str, ...] = ("physics",)
#: Groups computed from the oracle's outputs (one oracle pass serves both).
ORACLE_GROUPS = frozenset({"embedding", "prdc"})


def _items(spec: str | Iterable[str]) -> list[str]:
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    return [s for s in items if s]


def parse_metric_groups(spec: str | Iterable[str]) -> frozenset[str]:
    """``"all"`` or a comma-separated list of :data:`METRIC_GROUPS` and :data:`OPT_IN_GROUPS` -> the
    set of groups (``all``: every group of :data:`METRIC_GROUPS`; an opt-in group only by name).

    Raises:
        MolgenError: for an unknown or empty group list (naming the valid ones).
    """
    items = _items(spec)
    valid = ", ".join((*METRIC_GROUPS, *OPT_IN_GROUPS, "all"))
    unknown = [s for s in items if s != "all" and s not in METRIC_GROUPS + OPT_IN_GROUPS]
    if unknown or not items:
        what = f"unknown metric group '{unknown[0]}'" if unknown else "no metric group given"
        raise MolgenError(f"{what}; valid groups: {valid}")
    return frozenset(METRIC_GROUPS).union(items) - {"all"} if "all" in items else frozenset(items)


@dataclass
class _Reference:
    name: str
    smiles: list[str]
    train_ids: set[str] | None
    qm9: object | None = None  # QM9Data for --reference qm9
    mols3d: list | None = None  # Molecule3D | None per record, for a 3D reference file
    mols: list | None = None  # sanitized RDKit Mol (with its file's bonds) | None per record, ditto
    #: False when the reference SMILES carry no stereochemistry (QM9's): samples are then written
    #: without it too, or stereo perceived from 3D coordinates alone would move FCD/Scaf/Frag.
    isomeric: bool = True


def _load_reference(reference: str, train: str | None, cache_dir: str | None) -> _Reference:
    """QM9's test split (``qm9``) or a file as reference, with training identities for novelty."""
    if reference == "qm9":
        from molgen.data.canonical import canonical_qm9_smiles
        from molgen.data.qm9 import edm_splits, load_qm9

        data = load_qm9(cache_dir)
        canonical = canonical_qm9_smiles(data, cache_dir)
        splits = edm_splits(data.num_molecules)
        test = [canonical[i] for i in splits["test"].tolist() if canonical[i]]
        train_ids = {canonical[i] for i in splits["train"].tolist()} - {None}
        return _Reference("qm9_test", test, train_ids, qm9=data, isomeric=False)
    ref = read_molecules(reference)
    ref_smiles = [Chem.MolToSmiles(r.mol) for r in _valid(ref.records)]
    if not ref_smiles:
        raise MolgenError(f"reference file {reference} holds no valid molecule")
    train_ids = None
    if train is not None:
        train_ids = set(_identity(_valid(read_molecules(train).records)))
    mols3d = [r.mol3d for r in ref.records] if ref.is_3d else None
    mols = [r.mol for r in ref.records] if ref.is_3d else None
    return _Reference(f"file_{Path(reference).stem}", ref_smiles, train_ids, mols3d=mols3d, mols=mols)


def _property_w1(metrics: dict[str, float]) -> None:
    """``W1/<prop>`` aliases of MOSES's property distances (already Wasserstein-1)."""
    from molgen.metrics.moses import PROPERTY_NAMES

    for prop in PROPERTY_NAMES:
        if prop in metrics:
            metrics[f"W1/{prop}"] = metrics[prop]


def _moses_reference(smiles: list[str], groups: frozenset[str], n_jobs: int,
                     cache_dir: str | None) -> dict[str, float]:
    """MOSES's metrics of the requested groups (all of them: exactly :func:`moses_metrics`)."""
    from molgen.metrics import moses as M
    from molgen.metrics.moses_suite import moses_metrics

    if groups >= {"basic", "moses", "fcd"}:
        return moses_metrics(smiles, n_jobs=n_jobs, cache_dir=cache_dir)
    import numpy as np

    from molgen.metrics.fcd import fcd_stats, frechet_distance
    from molgen.metrics.moses_suite import compute_features, moses_precomputed_stats, score_against, train_set

    gen = None
    if "moses" in groups:
        gen = compute_features(smiles, n_jobs=n_jobs)
        canonical = gen.canonical
    else:
        with M.quiet_rdkit():
            canonical = [c for c in map(M.canonical_smiles, smiles) if c is not None]
    if len(canonical) < 2:
        raise MolgenError(f"only {len(canonical)} of {len(smiles)} SMILES are valid molecules")
    out: dict[str, float] = {"valid": len(canonical) / len(smiles)}
    if "basic" in groups:
        with M.quiet_rdkit():
            for k in (1000, 10000):
                out[f"unique@{k}"] = M.fraction_unique(canonical, k)
    gen_fcd = fcd_stats(canonical) if "fcd" in groups else None
    for suffix, split in (("Test", "test"), ("TestSF", "test_scaffolds")):
        ref = moses_precomputed_stats(split, cache_dir=cache_dir)
        if gen_fcd is not None:
            out[f"FCD/{suffix}"] = frechet_distance(gen_fcd.mu, gen_fcd.sigma, ref.fcd.mu, ref.fcd.sigma)
        if gen is not None:
            scores = score_against(gen, ref)
            for key in ("SNN", "Frag", "Scaf"):
                out[f"{key}/{suffix}"] = scores[key]
            if suffix == "Test":
                props = {name: scores[name] for name in M.PROPERTY_NAMES}
    if gen is not None:
        out["IntDiv"], out["IntDiv2"] = M.internal_diversities(gen.fps)
        out["Filters"] = float(np.mean(gen.passes_filters))
        out.update(props)
    if "basic" in groups:
        out["Novelty"] = len(set(canonical) - train_set()) / len(set(canonical))
    return {k: float(v) for k, v in out.items()}


def _atomic_numbers(r: MoleculeRecord):
    """Atomic numbers of a valid 3D record's atoms (from its Molecule3D, in RDKit's atom order)."""
    import numpy as np

    from molgen.chem.elements import ATOMIC_NUMBERS

    if r.mol is None or r.mol3d is None or len(r.mol3d.atom_types) != r.mol.GetNumAtoms():
        return None
    return np.asarray(ATOMIC_NUMBERS)[np.asarray(r.mol3d.atom_types, dtype=np.int64)]


def _oracle_groups(records: Sequence[MoleculeRecord], ref: _Reference, groups: frozenset[str],
                   cache_dir: str | None) -> tuple[dict[str, float], str | None]:
    """The ``embedding`` / ``prdc`` keys from one oracle pass over samples and reference, and the
    oracle's version (``({}, None)`` after a one-line warning when its weights are unusable)."""
    from molgen.metrics.oracle_metrics import (compare_features, load_metrics_oracle, oracle_features,
                                               qm9_reference_features)

    oracle = load_metrics_oracle()
    if oracle is None:
        return {}, None
    if ref.qm9 is not None:
        reference = qm9_reference_features(oracle, None, ref.qm9, cache_dir=cache_dir)
    else:
        reference = oracle_features(oracle, ref.mols3d)
    samples = oracle_features(oracle, [r.mol3d for r in records])
    out: dict[str, float] = {}
    if "embedding" in groups:
        out.update(compare_features(samples, reference, oracle.properties))
    if "prdc" in groups:
        from molgen.metrics.prdc import prdc_emb

        out.update(prdc_emb(samples, reference))
    return out, oracle.version


def run_benchmark(
    path: str,
    *,
    reference: str = "qm9",
    train: str | None = None,
    n: int | None = None,
    column: str | None = None,
    n_jobs: int = 2,
    cache_dir: str | None = None,
    metrics: str | Iterable[str] = "all",
) -> BenchmarkReport:
    """Read ``path`` and compute the metric suite against ``reference`` (``qm9``, ``moses`` or a file).

    ``metrics``: ``"all"`` or a comma-separated list (or iterable) of :data:`METRIC_GROUPS`.
    """
    asked = _items(metrics)
    groups = parse_metric_groups(asked)
    named = set() if "all" in asked else set(asked)  # groups asked for by name, not through "all"
    read = read_molecules(path, column=column)
    records = read.records[:n] if n is not None else read.records
    if n is not None and n < 1:
        raise MolgenError("--n must be at least 1")
    total = len(records)
    valid = _valid(records)
    out: dict[str, float] = {"n": float(total), "valid": len(valid) / total}
    reasons: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            reasons[r.error] = reasons.get(r.error, 0) + 1
    for reason, count in sorted(reasons.items()):
        out[f"invalid/{reason}"] = float(count)
    physics_skipped = {}
    if "physics" in groups:  # needs no reference
        if read.is_3d and any(r.mol3d is not None for r in records):
            from molgen.metrics.physics import physics_metrics

            out.update(physics_metrics([r.mol if r.mol3d is not None else None for r in records], n_jobs=n_jobs))
        else:
            physics_skipped["physics"] = "needs 3D input (XYZ or 3D SDF)"

    if reference == "moses":
        if train is not None:
            raise MolgenError("--train does not apply to --reference moses (it uses the MOSES training set)")
        smiles = [r.source if read.format in SMILES_FORMATS or r.mol is None else Chem.MolToSmiles(r.mol)
                  for r in records]
        out.update(_moses_reference(smiles, groups, n_jobs, cache_dir))
        _property_w1(out)
        why = "the MOSES reference has no 3D coordinates"
        return BenchmarkReport(out, read, reference, smiles, skipped={
            **{g: why for g in sorted(groups & (ORACLE_GROUPS | {"geometry"}) & named)}, **physics_skipped})

    from molgen.metrics import moses as M

    ref = _load_reference(reference, train, cache_dir)
    gen_smiles = [Chem.MolToSmiles(r.mol, isomericSmiles=ref.isomeric) for r in valid]
    is_3d = read.is_3d and any(r.mol3d is not None for r in records)
    skipped: dict[str, str] = dict(physics_skipped)
    if len(valid) < 2:  # validity, reasons, uniqueness and stability still count; distributions need 2
        why = f"needs at least 2 valid molecules ({len(valid)} of {total} are valid)"
        skipped.update({g: why for g in sorted(groups & {"moses", "fcd", "embedding", "prdc"})})
        groups = groups - set(skipped)
    if "basic" in groups:
        ids = _identity(valid)
        out["unique"] = len(set(ids)) / max(len(ids), 1)
        out["valid_unique"] = out["valid"] * out["unique"]
        out["valid_connected"] = sum(len(Chem.GetMolFrags(r.mol)) == 1 for r in valid) / total
        if ref.train_ids is not None:
            distinct = set(ids)
            out["novel"] = len(distinct - ref.train_ids) / max(len(distinct), 1)
            out["valid_unique_novel"] = out["valid_unique"] * out["novel"]
    gen = ref_stats = None
    if groups & {"moses", "fcd"}:
        from molgen.metrics.moses_suite import compute_features, reference_stats, score_against

        ref_stats = reference_stats(ref.smiles, name=ref.name, n_jobs=n_jobs, cache_dir=cache_dir,
                                    with_fcd="fcd" in groups)
        if "moses" in groups:
            gen = compute_features(gen_smiles, n_jobs=n_jobs)
    if "fcd" in groups:
        from molgen.metrics.fcd import fcd_stats, frechet_distance

        if gen is not None:
            canonical = gen.canonical
        else:
            with M.quiet_rdkit():
                canonical = [c for c in map(M.canonical_smiles, gen_smiles) if c is not None]
        gen_fcd = fcd_stats(canonical)
        out["FCD/Test"] = frechet_distance(gen_fcd.mu, gen_fcd.sigma, ref_stats.fcd.mu, ref_stats.fcd.sigma)
    if gen is not None:
        import numpy as np

        scores = score_against(gen, ref_stats)
        for key in ("SNN", "Frag", "Scaf"):
            out[f"{key}/Test"] = scores[key]
        out["IntDiv"], out["IntDiv2"] = M.internal_diversities(gen.fps)
        out["Filters"] = float(np.mean(gen.passes_filters))
        for prop in M.PROPERTY_NAMES:
            out[prop] = scores[prop]
        _property_w1(out)
    if "basic" in groups and is_3d:
        from molgen.chem.stability import stability_counts

        out.update(stability_counts([r.mol3d for r in records if r.mol3d is not None]))
    why_not = None  # why the 3D groups cannot apply
    if not is_3d:
        why_not = "needs 3D input (XYZ or 3D SDF)"
    elif ref.qm9 is None and ref.mols3d is None:
        why_not = "needs a 3D reference (qm9 or a 3D file)"
    if why_not is not None:
        skipped.update({g: why_not for g in sorted(groups & (ORACLE_GROUPS | {"geometry"}) & named)})
    oracle_version = geometry = None
    if groups & ORACLE_GROUPS and why_not is None:
        oracle_out, oracle_version = _oracle_groups(records, ref, groups & ORACLE_GROUPS, cache_dir)
        out.update(oracle_out)
    if "geometry" in groups and why_not is None:
        from molgen.metrics.geometry import measure_geometry, score_geometry

        geometry = measure_geometry([r.mol for r in records], sample_z=[_atomic_numbers(r) for r in records],
                                    qm9_data=ref.qm9, reference_mols=ref.mols, cache_dir=cache_dir)
        out.update(score_geometry(*geometry, len(records)))
    return BenchmarkReport(
        out, read, reference, gen_smiles,
        sample_properties={k: list(map(float, v)) for k, v in gen.properties.items()} if gen else {},
        reference_properties={k: list(map(float, v)) for k, v in ref_stats.properties.items()} if gen else {},
        oracle_version=oracle_version, skipped=skipped, geometry=geometry,
    )
