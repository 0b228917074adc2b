"""`molgen benchmark` end to end on small files: counted invalid input, JSON keys, MLflow run, 3D metrics."""

from __future__ import annotations

import json

from molgen.chem.io import write_xyz
from tests.test_cli import assert_one_line_error, molgen


def test_smiles_file_against_a_file_reference(tmp_path, qm9, qm9_cache) -> None:
    samples = tmp_path / "samples.smi"
    samples.write_text("CCO\r\nc1ccccc1\nnot_a_smiles\nCCO\nC1=CC=CC=C1\nO=C=O\n\nCN\n", encoding="utf-8")
    reference = tmp_path / "ref.smi"
    reference.write_text("\n".join(qm9.smiles[1000:1200]) + "\n")
    train = tmp_path / "train.smi"
    train.write_text("CCO\nCN\n")
    env = {"MOLGEN_CACHE": qm9_cache, "MLFLOW_TRACKING_URI": ""}
    proc = molgen("benchmark", str(samples), "--reference", str(reference), "--train", str(train), "--out",
                  str(tmp_path / "r.json"), "--jobs", "1", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 7 and abs(report["valid"] - 6 / 7) < 1e-9
    assert report["invalid/parse"] == 1
    assert abs(report["unique"] - 4 / 6) < 1e-9  # CCO twice, benzene written twice
    assert abs(report["novel"] - 2 / 4) < 1e-9  # CCO and CN are in the training file
    for key in ("FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv", "IntDiv2", "logP", "SA", "QED", "weight"):
        assert key in report
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run_id = proc.stdout.strip().splitlines()[-1].split()[-1]
    run = client.get_run(run_id)
    assert run.data.tags["molgen.kind"] == "external-benchmark"
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"input", "samples_grid.png", "property_histograms.png"} <= names


def test_xyz_of_qm9_molecules_gets_3d_metrics(tmp_path, qm9, qm9_cache) -> None:
    mols = [qm9.molecule(i) for i in range(2000, 2060)]
    for m in mols:
        m.charges, m.properties = None, {}
    write_xyz(mols, tmp_path / "q.xyz")
    reference = tmp_path / "ref.smi"
    reference.write_text("\n".join(qm9.smiles[3000:3200]) + "\n")
    env = {"MOLGEN_CACHE": qm9_cache, "MLFLOW_TRACKING_URI": ""}
    proc = molgen("benchmark", str(tmp_path / "q.xyz"), "--reference", str(reference), "--out",
                  str(tmp_path / "r.json"), "--jobs", "1", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 60 and report["atom_stability"] > 0.97 and report["valid"] > 0.9


def test_unreadable_inputs(tmp_path) -> None:
    (tmp_path / "empty.smi").write_text("")
    assert_one_line_error(molgen("benchmark", str(tmp_path / "empty.smi"), cwd=tmp_path), "empty")
    (tmp_path / "x.pdf").write_text("CCO\n")
    assert_one_line_error(molgen("benchmark", str(tmp_path / "x.pdf"), cwd=tmp_path), ".smi")
    assert_one_line_error(molgen("benchmark", str(tmp_path / "missing.smi"), cwd=tmp_path), "missing.smi")
