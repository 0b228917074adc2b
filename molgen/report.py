"""Outputs of ``molgen benchmark`` and ``molgen compare``: JSON reports and the MLflow run of an external benchmark."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from molgen.io_utils import atomic_open
from molgen.metrics.suite import BenchmarkReport


def write_json(metrics: dict[str, float | str], path: str) -> None:
    """A flat JSON object (strings kept, non-finite numbers become null), written atomically."""
    clean = {k: (v if isinstance(v, str) or (isinstance(v, (int, float)) and math.isfinite(v)) else None)
             for k, v in metrics.items()}
    with atomic_open(path, "w") as fh:
        json.dump(clean, fh, indent=2)
        fh.write("\n")


def _finite_or_none(value):
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_document(document: dict, path: str | Path) -> Path:
    """A nested JSON document (non-finite numbers become null), written atomically; returns ``path``."""
    with atomic_open(path, "w") as fh:
        json.dump(_finite_or_none(document), fh, indent=2)
        fh.write("\n")
    return Path(path)


def log_benchmark(report: BenchmarkReport, file: str, *, name: str | None, tracking_uri: str | None) -> str | None:
    """One MLflow run tagged as an external benchmark: metrics, the input file, plots."""
    from rdkit import Chem

    from molgen.plots import molecule_grid_png, property_histograms_png
    from molgen.tracking import Tracker
    from molgen.viewer import write_viewer

    tags = {"molgen.kind": "external-benchmark", "molgen.reference": report.reference}
    if report.oracle_version:
        tags["molgen.oracle_version"] = report.oracle_version
    with Tracker(tracking_uri, "molgen-benchmarks", run_name=name or Path(file).name, tags=tags) as tracker:
        tracker.log_params({"file": str(Path(file).resolve()), "reference": report.reference,
                            "format": report.read.format, "n_total": report.read.n_total})
        tracker.log_metrics(report.metrics, step=0)
        if Path(file).is_file() and Path(file).stat().st_size < 200 * 2**20:
            tracker.log_artifact(file, "input")
        with tempfile.TemporaryDirectory() as tmp:
            grid = Path(tmp) / "samples_grid.png"
            molecule_grid_png([Chem.MolFromSmiles(s) for s in report.samples_smiles[:16]], grid)
            tracker.log_artifact(grid)
            mols3d = [r.mol3d for r in report.read.records if r.mol3d is not None]  # 3D inputs (SDF, XYZ)
            if mols3d:
                tracker.log_artifact(write_viewer(mols3d, Path(tmp) / "samples_viewer.html", title=Path(file).name))
            if report.sample_properties:
                hist = Path(tmp) / "property_histograms.png"
                property_histograms_png(report.sample_properties, report.reference_properties, hist)
                tracker.log_artifact(hist)
        return tracker.run_id
