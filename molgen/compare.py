"""``molgen compare``: several generators' molecules scored in one run against one reference.

A contender is one of

- a molecule file (SMILES / CSV / SDF / XYZ, as ``molgen benchmark`` reads);
- an MLflow run id (32 hex digits): the run's molecule artifact, looked up in ``samples/`` (training
  runs), ``eval/``, ``input/`` (benchmark runs) and the run's root, a 3D file (SDF, then XYZ)
  before a SMILES one;
- ``pretrained:NAME``: ``n`` molecules sampled from a shipped model (``molgen generate --pretrained``);
- ``qm9:SPLIT`` (``train``, ``valid`` or ``test``): ``n`` molecules drawn from that split of QM9 with
  their DFT geometries (the data as a generator: the ceiling of every 3D column).

Every contender goes through :func:`molgen.metrics.suite.run_benchmark` with the same reference,
metric groups and molecule cap, so the rules are the same for everyone. :data:`COLUMNS` names the
headline metrics of the report and which way is better; :func:`best_rows` marks the best value of each.
The HTML report is :mod:`molgen.compare_report`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from molgen.errors import MolgenError
from molgen.metrics.suite import BenchmarkReport

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
#: Artifact folders searched for a run's molecules, in order.
RUN_FOLDERS: tuple[str, ...] = ("samples", "eval", "input", "")
#: Molecule-file suffixes, preferred first (3D before SMILES).
RUN_SUFFIXES: tuple[str, ...] = (".sdf", ".xyz", ".smi", ".csv")
QM9_SPLITS = ("train", "valid", "test")

#: ``(section, key, better)`` of the report's tables; ``better`` is ``"high"`` or ``"low"``.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("EDM", "valid", "high"),
    ("EDM", "valid_unique", "high"),
    ("EDM", "novel", "high"),
    ("EDM", "valid_unique_novel", "high"),
    ("EDM", "valid_connected", "high"),
    ("EDM", "atom_stability", "high"),
    ("EDM", "mol_stability", "high"),
    ("MOSES", "FCD/Test", "low"),
    ("MOSES", "SNN/Test", "high"),
    ("MOSES", "Frag/Test", "high"),
    ("MOSES", "Scaf/Test", "high"),
    ("MOSES", "IntDiv", "high"),
    ("MOSES", "Filters", "high"),
    ("MOSES", "W1/QED", "low"),
    ("MOSES", "W1/SA", "low"),
    ("MOSES", "W1/logP", "low"),
    ("MOSES", "W1/weight", "low"),
    ("oracle embedding", "FD_emb", "low"),
    ("oracle embedding", "KID_emb", "low"),
    ("oracle embedding", "precision_emb", "high"),
    ("oracle embedding", "recall_emb", "high"),
    ("oracle embedding", "density_emb", "high"),
    ("oracle embedding", "coverage_emb", "high"),
    ("geometry", "geometry/bond_length_w1", "low"),
    ("geometry", "geometry/bond_angle_w1", "low"),
    ("geometry", "geometry/torsion_w1", "low"),
    ("geometry", "geometry/atom_type_tv", "low"),
    ("geometry", "geometry/bond_type_tv", "low"),
    ("physics", "physics/pb_valid", "high"),
    ("physics", "physics/strain", "low"),
    ("physics", "physics/strain_per_atom", "low"),
    ("physics", "physics/relax_rmsd", "low"),
    ("physics", "physics/energy_per_atom", "low"),
)


@dataclass
class Contender:
    """One generator of the comparison: its label in the report, the file scored and where it came from."""

    label: str
    path: Path
    source: str


@dataclass
class Comparison:
    """Every contender's benchmark report, in input order, against one reference."""

    reference: str
    contenders: list[Contender]
    reports: list[BenchmarkReport]

    def value(self, row: int, key: str) -> float | None:
        v = self.reports[row].metrics.get(key)
        return None if v is None or not np.isfinite(v) else float(v)

    def columns(self) -> list[tuple[str, str, str]]:
        """The :data:`COLUMNS` at least one contender has a value for."""
        return [c for c in COLUMNS if any(self.value(i, c[1]) is not None for i in range(len(self.reports)))]

    def best_rows(self, key: str, better: str) -> set[int]:
        """Rows holding the best value of ``key`` (ties all marked; none with fewer than 2 values)."""
        values = {i: self.value(i, key) for i in range(len(self.reports))}
        values = {i: v for i, v in values.items() if v is not None}
        if len(values) < 2:
            return set()
        best = max(values.values()) if better == "high" else min(values.values())
        return {i for i, v in values.items() if v == best}

    def as_json(self) -> dict:
        """``{"reference": ..., "contenders": [{"label", "source", "metrics": {...}}, ...]}``."""
        return {"reference": self.reference,
                "contenders": [{"label": c.label, "source": c.source, "path": str(c.path), "metrics": r.as_json()}
                               for c, r in zip(self.contenders, self.reports)]}

    def table_markdown(self) -> str:
        """One row per contender, the headline columns; the best value of each column in bold."""
        cols = self.columns()
        lines = ["| generator | " + " | ".join(k for _, k, _ in cols) + " |",
                 "|---" * (len(cols) + 1) + "|"]
        best = {k: self.best_rows(k, b) for _, k, b in cols}
        for i, c in enumerate(self.contenders):
            cells = []
            for _, key, _ in cols:
                v = self.value(i, key)
                text = "–" if v is None else f"{v:.4g}"
                cells.append(f"**{text}**" if i in best[key] else text)
            lines.append(f"| {c.label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _unique_label(label: str, taken: set[str]) -> str:
    out, k = label, 2
    while out in taken:
        out, k = f"{label}-{k}", k + 1
    taken.add(out)
    return out


def run_molecule_artifact(run_id: str, tracking_uri: str | None, dst: Path) -> Path:
    """Download the molecule file of MLflow run ``run_id`` (see the module doc for the search order)."""
    from molgen.tracking import download_artifact, get_run
    from molgen.tracking_store import mlflow_client, resolve_tracking_uri

    get_run(run_id, tracking_uri)  # a one-line error for an unknown run
    client = mlflow_client(resolve_tracking_uri(tracking_uri), create=False)
    for folder in RUN_FOLDERS:
        try:
            names = [a.path for a in client.list_artifacts(run_id, folder or None) if not a.is_dir]
        except Exception:  # an absent folder lists as empty on some stores and raises on others
            names = []
        for suffix in RUN_SUFFIXES:
            found = sorted(n for n in names if n.lower().endswith(suffix))
            if found:
                return download_artifact(run_id, found[0], tracking_uri, dst)
    raise MolgenError(f"MLflow run {run_id} has no molecule file ({', '.join(RUN_SUFFIXES)}) in "
                      f"{', '.join(f or '(root)' for f in RUN_FOLDERS)}")


def qm9_sample_file(split: str, n: int, seed: int, path: Path, cache_dir: str | None = None) -> Path:
    """``n`` molecules drawn without replacement from QM9's EDM ``split``, written as SDF (DFT geometry)."""
    from molgen.chem.io import write_molecules
    from molgen.data.qm9 import edm_splits, load_qm9

    if split not in QM9_SPLITS:
        raise MolgenError(f"unknown QM9 split '{split}' (qm9:SPLIT takes {', '.join(QM9_SPLITS)})")
    data = load_qm9(cache_dir)
    rows = edm_splits(data.num_molecules)[split].numpy()
    pick = np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False)
    write_molecules([data.molecule(int(i)) for i in np.sort(pick)], path)
    return path


def resolve_contenders(specs: Sequence[str], *, n: int, seed: int, workdir: Path, tracking_uri: str | None = None,
                       device: str = "auto", steps: int | None = None, cache_dir: str | None = None) -> list[Contender]:
    """Each spec (see the module doc) as a local molecule file under a unique label.

    Raises:
        MolgenError: for a spec that is no file, run id, shipped model or QM9 split, or with fewer
            than two contenders.
    """
    from molgen.zoo import pretrained_names

    if len(specs) < 2:
        raise MolgenError(f"compare needs at least 2 generators, got {len(specs)}")
    taken: set[str] = set()
    out = []
    for k, spec in enumerate(specs):
        folder = workdir / f"{k:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        if Path(spec).is_file():
            out.append(Contender(_unique_label(Path(spec).stem, taken), Path(spec), f"file {spec}"))
        elif spec.startswith("pretrained:"):
            name = spec.split(":", 1)[1]
            if name not in pretrained_names():
                raise MolgenError(f"no shipped model '{name}' (shipped: {', '.join(pretrained_names())})")
            from molgen.generate import generate_molecules

            path = folder / f"{name}.sdf"
            generate_molecules(run_id=None, checkpoint=None, n=n, targets=[], n_atoms=None, guidance=None, steps=steps,
                               seed=seed, device=device, tracking_uri=None, out=str(path), pretrained=name)
            out.append(Contender(_unique_label(name, taken), path, f"pretrained {name}, {n} samples, seed {seed}"))
        elif spec.startswith("qm9:"):
            split = spec.split(":", 1)[1]
            path = qm9_sample_file(split, n, seed, folder / f"qm9_{split}.sdf", cache_dir)
            out.append(Contender(_unique_label(f"qm9-{split}", taken), path,
                                 f"QM9 {split} split, {n} molecules drawn with seed {seed} (DFT geometry)"))
        elif _RUN_ID.match(spec):
            path = run_molecule_artifact(spec, tracking_uri, folder)
            out.append(Contender(_unique_label(f"run-{spec[:8]}", taken), path, f"MLflow run {spec} ({path.name})"))
        else:
            raise MolgenError(f"'{spec}' is not a file, an MLflow run id, pretrained:NAME or qm9:SPLIT")
    return out


def compare(contenders: Sequence[Contender], *, reference: str = "qm9", metrics: str = "all", n: int | None = None,
            n_jobs: int = 2, cache_dir: str | None = None, train: str | None = None) -> Comparison:
    """Score every contender with :func:`~molgen.metrics.suite.run_benchmark` under the same settings."""
    from molgen.metrics.suite import run_benchmark

    reports = []
    for c in contenders:
        try:
            reports.append(run_benchmark(str(c.path), reference=reference, train=train, n=n, n_jobs=n_jobs,
                                         cache_dir=cache_dir, metrics=metrics))
        except MolgenError as exc:
            raise MolgenError(f"{c.label}: {exc}") from None
    return Comparison(reference, list(contenders), reports)


def log_comparison(comparison: Comparison, files: Sequence[Path], *, name: str | None = None,
                   tracking_uri: str | None = None) -> str | None:
    """One MLflow run (experiment ``molgen-compare``): every contender's metrics as ``<label>/<key>``,
    the sources as params, ``files`` (report, JSON) and the contenders' molecule files as artifacts."""
    from molgen.tracking import Tracker

    tags = {"molgen.kind": "compare", "molgen.reference": comparison.reference}
    versions = sorted({r.oracle_version for r in comparison.reports if r.oracle_version})
    if versions:
        tags["molgen.oracle_version"] = ",".join(versions)
    labels = ", ".join(c.label for c in comparison.contenders)
    with Tracker(tracking_uri, "molgen-compare", run_name=name or f"compare {labels}"[:200], tags=tags) as tracker:
        tracker.log_params({"reference": comparison.reference,
                            **{f"contender/{c.label}": c.source for c in comparison.contenders}})
        tracker.log_metrics({f"{c.label}/{k}": v for c, r in zip(comparison.contenders, comparison.reports)
                             for k, v in r.metrics.items()}, step=0)
        for path in files:
            tracker.log_artifact(path)
        for c in comparison.contenders:
            if c.path.stat().st_size < 200 * 2**20:
                tracker.log_artifact(c.path, f"inputs/{c.label}")
        return tracker.run_id
