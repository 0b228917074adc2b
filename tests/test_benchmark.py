"""`molgen benchmark` end to end on small files: counted invalid input, JSON keys, MLflow run, 3D metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from molgen.chem.io import write_sdf, write_xyz
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


# ----------------------------------------------------------------------------- --metrics groups


def test_metrics_basic_skips_the_other_groups(tmp_path, small_qm9) -> None:
    samples = tmp_path / "samples.smi"
    samples.write_text("CCO\nc1ccccc1\nnot_a_smiles\nCCO\nCN\n")
    reference = tmp_path / "ref.smi"
    reference.write_text("\n".join(small_qm9.smiles[100:200]) + "\n")
    env = {"MOLGEN_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": ""}
    proc = molgen("benchmark", str(samples), "--reference", str(reference), "--metrics", "basic", "--out",
                  str(tmp_path / "r.json"), "--jobs", "1", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == 5 and abs(report["unique"] - 3 / 4) < 1e-9
    assert not {"FCD/Test", "SNN/Test", "IntDiv", "logP", "W1/logP", "FD_emb"} & set(report)
    assert not (tmp_path / "cache" / "moses_reference").exists()  # no reference statistics computed


def test_metrics_unknown_group_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / "s.smi").write_text("CCO\nCN\n")
    proc = molgen("benchmark", str(tmp_path / "s.smi"), "--metrics", "basic,nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_line_error(proc, "nope", "basic, moses, fcd, embedding, prdc, geometry, physics, all")


def test_parse_metric_groups() -> None:
    from molgen.errors import MolgenError
    from molgen.metrics.suite import METRIC_GROUPS, parse_metric_groups

    assert parse_metric_groups("all") == set(METRIC_GROUPS) and "physics" not in METRIC_GROUPS  # opt-in
    assert parse_metric_groups("all,physics") == set(METRIC_GROUPS) | {"physics"}
    assert parse_metric_groups(" fcd, basic ") == {"fcd", "basic"}
    for bad in ("", ",", "Basic"):
        with pytest.raises(MolgenError, match="valid groups"):
            parse_metric_groups(bad)


# ----------------------------------------------------------------------------- embedding group

EMBEDDING_KEYS = ("FD_emb", "KID_emb", "KID_emb_std", "MMD_emb", "KDE_ref_under_samples",
                  "KDE_samples_under_ref", "oracle/unusable")
ORACLE_W1_KEYS = ("W1/alpha", "W1/gap", "W1/homo", "W1/lumo", "W1/mu", "W1/Cv")


@pytest.fixture(scope="module")
def small_qm9(tmp_path_factory, qm9_small_source):
    """The 200 first QM9 molecules (fast to parse)."""
    from molgen.data.qm9 import load_qm9

    return load_qm9(tmp_path_factory.mktemp("small_qm9_cache"), source_dir=qm9_small_source)


def _xyz(mols, path: Path) -> Path:
    for m in mols:
        m.charges, m.properties = None, {}
    write_xyz(mols, path)
    return path


def test_embedding_metrics_for_3d_input_absent_for_smiles(tmp_path, small_qm9, tiny_oracle, monkeypatch) -> None:
    from molgen.metrics.suite import run_benchmark

    samples = _xyz([small_qm9.molecule(i) for i in range(0, 60)], tmp_path / "s.xyz")
    reference = _xyz([small_qm9.molecule(i) for i in range(100, 200)], tmp_path / "ref.xyz")
    env = {"MOLGEN_CACHE": str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": "", "MOLGEN_ORACLE": str(tiny_oracle)}
    proc = molgen("benchmark", str(samples), "--reference", str(reference), "--metrics", "basic,embedding",
                  "--out", str(tmp_path / "r.json"), "--jobs", "1", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    for key in EMBEDDING_KEYS + ORACLE_W1_KEYS:
        assert key in report and report[key] is not None, key
    assert report["oracle/unusable"] == 0 and report["FD_emb"] > 0 and report["atom_stability"] > 0.9
    from molgen.oracle import load_oracle

    assert report["oracle_version"] == load_oracle(tiny_oracle).version  # the yardstick is named
    assert f"oracle_version" in proc.stdout

    # SMILES carry no coordinates for the oracle: the group's keys are absent
    smi = tmp_path / "s.smi"
    smi.write_text("\n".join(small_qm9.smiles[:60]) + "\n")
    monkeypatch.setenv("MOLGEN_ORACLE", str(tiny_oracle))
    report = run_benchmark(str(smi), reference=str(reference), metrics="basic,embedding", n_jobs=1,
                           cache_dir=str(tmp_path / "cache")).metrics
    assert report["n"] == 60 and "unique" in report
    assert not set(EMBEDDING_KEYS + ORACLE_W1_KEYS) & set(report)


def test_embedding_metrics_count_unusable_and_skip_without_oracle(tmp_path, small_qm9, tiny_oracle,
                                                                  monkeypatch, capsys) -> None:
    from molgen.metrics.suite import run_benchmark

    samples = _xyz([small_qm9.molecule(i) for i in range(0, 40)], tmp_path / "s.xyz")
    with samples.open("a") as fh:  # a molecule the oracle cannot embed (Cl is not in its vocabulary)
        fh.write("2\nHCl\nCl 0.0 0.0 0.0\nH 0.0 0.0 1.27\n")
    reference = tmp_path / "ref.sdf"
    write_sdf([small_qm9.molecule(i) for i in range(100, 200)], reference)
    monkeypatch.setenv("MOLGEN_ORACLE", str(tiny_oracle))
    report = run_benchmark(str(samples), reference=str(reference), metrics="embedding", n_jobs=1,
                           cache_dir=str(tmp_path / "cache"))
    assert report.metrics["n"] == 41 and report.metrics["oracle/unusable"] == 1
    assert all(k in report.metrics for k in EMBEDDING_KEYS + ORACLE_W1_KEYS)
    assert "unique" not in report.metrics and "atom_stability" not in report.metrics  # basic not asked
    from molgen.oracle import load_oracle

    version = load_oracle(tiny_oracle).version  # the report names the oracle behind its embedding keys
    assert report.oracle_version == version and report.as_json()["oracle_version"] == version
    monkeypatch.setenv("MOLGEN_ORACLE", str(tmp_path / "missing.pt"))
    capsys.readouterr()
    report = run_benchmark(str(samples), reference=str(reference), metrics="all", n_jobs=1,
                           cache_dir=str(tmp_path / "cache"))
    assert not set(EMBEDDING_KEYS) & set(report.metrics) and "SNN/Test" in report.metrics
    assert report.oracle_version is None and "oracle_version" not in report.as_json()
    err = [line for line in capsys.readouterr().err.splitlines() if "oracle" in line]
    assert len(err) == 1 and "missing.pt" in err[0]


def test_qm9_reference_features_are_cached(tmp_path, small_qm9, tiny_oracle, monkeypatch) -> None:
    import numpy as np

    from molgen.metrics import oracle_metrics as OM
    from molgen.oracle import load_oracle

    oracle = load_oracle(tiny_oracle)
    rows = OM.qm9_reference_rows(small_qm9, size=15)
    from molgen.data.qm9 import edm_splits

    test_rows = set(edm_splits(200)["test"].tolist())
    assert len(rows) == 15 and set(rows.tolist()) <= test_rows
    first = OM.qm9_reference_features(oracle, tiny_oracle, small_qm9, size=15, cache_dir=tmp_path)
    assert len(list((tmp_path / "oracle_reference").glob("qm9_test-*.npz"))) == 1
    assert np.isfinite(first.embeddings).all() and first.preds.shape == (15, 6)

    def fail(*args, **kwargs):
        raise AssertionError("reference recomputed despite the cache")

    monkeypatch.setattr(OM, "oracle_features", fail)
    again = OM.qm9_reference_features(oracle, tiny_oracle, small_qm9, size=15, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    monkeypatch.undo()
    # the embedding group against QM9 uses these features
    monkeypatch.setenv("MOLGEN_ORACLE", str(tiny_oracle))
    out = OM.embedding_metrics([small_qm9.molecule(i) for i in range(30)] + [None], qm9_data=small_qm9,
                               cache_dir=tmp_path, qm9_size=15)
    assert out["oracle/unusable"] == 1 and all(k in out for k in EMBEDDING_KEYS + ORACLE_W1_KEYS)


def test_too_few_valid_molecules_still_report_validity(tmp_path) -> None:
    """One valid molecule of three: validity and the reasons are reported, the distribution groups
    that need two molecules are skipped and say why (the report is not thrown away)."""
    from molgen.metrics.suite import run_benchmark

    smi = tmp_path / "few.smi"
    smi.write_text("CCO\nC1CC\nnot_a_smiles\n")
    report = run_benchmark(str(smi), metrics="basic,fcd", n_jobs=1, cache_dir=str(tmp_path / "cache"))
    assert report.metrics["n"] == 3 and abs(report.metrics["valid"] - 1 / 3) < 1e-9
    assert sum(v for k, v in report.metrics.items() if k.startswith("invalid/")) == 2
    assert "FCD/Test" not in report.metrics and "at least 2 valid" in report.skipped["fcd"]
    assert report.as_json()["skipped/fcd"] == report.skipped["fcd"]


def test_sdf_holding_smiles_lines_gets_a_format_hint(tmp_path) -> None:
    from molgen.errors import MolgenError
    from molgen.metrics.suite import run_benchmark

    wrong = tmp_path / "x.sdf"
    wrong.write_text("CCO\nc1ccccc1\nCCN\n")
    with pytest.raises(MolgenError, match="look like SMILES: rename it to .smi"):
        run_benchmark(str(wrong), metrics="basic", n_jobs=1, cache_dir=str(tmp_path / "cache"))
