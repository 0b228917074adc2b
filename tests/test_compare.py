"""`molgen compare`: contenders from files, runs and QM9; best values marked; self-contained HTML; one MLflow run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from molgen.chem.io import write_sdf, write_xyz
from molgen.compare import Comparison, Contender
from tests.test_cli import assert_one_line_error, molgen


def _comparison(rows: list[dict[str, float]]) -> Comparison:
    contenders = [Contender(f"g{i}", Path(f"g{i}.sdf"), "test") for i in range(len(rows))]
    return Comparison("qm9", contenders, [SimpleNamespace(metrics=m) for m in rows])


def test_best_rows_follow_each_columns_direction() -> None:
    c = _comparison([{"valid": 0.9, "FCD/Test": 2.0, "mol_stability": 0.5},
                     {"valid": 0.8, "FCD/Test": 1.0, "mol_stability": 0.5},
                     {"valid": float("nan"), "FCD/Test": 3.0}])
    assert c.best_rows("valid", "high") == {0}  # NaN is no value, not a winner
    assert c.best_rows("FCD/Test", "low") == {1}
    assert c.best_rows("mol_stability", "high") == {0, 1}  # ties are all marked
    assert c.best_rows("atom_stability", "high") == set()  # nobody has it
    keys = [k for _, k, _ in c.columns()]
    assert keys == ["valid", "mol_stability", "FCD/Test"]  # COLUMNS order, only keys someone has
    table = c.table_markdown().splitlines()
    assert table[2].startswith("| g0 | **0.9** | **0.5** | 2 |")
    assert table[4] == "| g2 | – | – | 3 |"


def _noisy(mols, sigma: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for m in mols:
        out.append(dataclasses.replace(m, positions=m.positions + rng.normal(0.0, sigma, m.positions.shape)))
    return out


@pytest.fixture()
def files(tmp_path, qm9):
    mols = [qm9.molecule(i) for i in range(2000, 2080)]
    for m in mols:
        m.charges, m.properties = None, {}
    write_sdf(mols, tmp_path / "good.sdf")
    write_xyz(_noisy(mols, 0.1), tmp_path / "noisy.xyz")
    ref = [qm9.molecule(i) for i in range(3000, 3200)]
    for m in ref:
        m.charges, m.properties = None, {}
    write_sdf(ref, tmp_path / "ref.sdf")
    return tmp_path


def test_compare_files_and_a_run_end_to_end(files, qm9_cache) -> None:
    from mlflow.tracking import MlflowClient

    from molgen.tracking import Tracker

    tmp = files
    uri = f"sqlite:///{tmp}/mlruns.db"
    with Tracker(uri, "molgen-benchmarks", run_name="noisy") as tracker:  # a run holding a molecule file
        tracker.log_artifact(tmp / "noisy.xyz", "input")
        run_id = tracker.run_id
    env = {"MOLGEN_CACHE": qm9_cache, "MLFLOW_TRACKING_URI": ""}
    proc = molgen("compare", str(tmp / "good.sdf"), str(tmp / "noisy.xyz"), run_id, "qm9:test", "-n", "40",
                  "--reference", str(tmp / "ref.sdf"), "--metrics", "basic,geometry", "--jobs", "1",
                  "--out", str(tmp / "report.html"), "--tracking-uri", uri, cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp / "report.json").read_text())
    rows = {c["label"]: c for c in data["contenders"]}
    assert list(rows) == ["good", "noisy", f"run-{run_id[:8]}", "qm9-test"]
    assert rows[f"run-{run_id[:8]}"]["source"].startswith(f"MLflow run {run_id}")
    for label in rows:  # -n caps every contender alike
        assert rows[label]["metrics"]["n"] == 40
    good, noisy = rows["good"]["metrics"], rows["noisy"]["metrics"]
    assert good["atom_stability"] > 0.97 > noisy["atom_stability"]
    assert good["geometry/bond_length_w1"] < noisy["geometry/bond_length_w1"]
    # the run's molecules are the noisy file's: the same scores
    assert rows[f"run-{run_id[:8]}"]["metrics"]["atom_stability"] == pytest.approx(noisy["atom_stability"])

    page = (tmp / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # viewable offline
    assert page.count("data:image/png;base64,") == 1 + 4  # geometry histograms + 4 grids (no MOSES properties)
    stability_row = re.search(r"<tr><th>good</th>(.*?)</tr>", page).group(1)
    assert "★" in stability_row
    assert sum(line.startswith("| ") for line in proc.stdout.splitlines()) == 5  # the table: header + 4 rows

    client = MlflowClient(uri)
    cmp_run = client.get_run(proc.stdout.strip().splitlines()[-1].split()[-1])
    assert cmp_run.data.tags["molgen.kind"] == "compare"
    assert cmp_run.data.metrics["good/atom_stability"] == pytest.approx(good["atom_stability"])
    names = {a.path for a in client.list_artifacts(cmp_run.info.run_id)}
    assert {"report.html", "report.json", "inputs"} <= names


def test_compare_bad_input_is_one_line(tmp_path, files) -> None:
    from molgen.compare import resolve_contenders
    from molgen.errors import MolgenError

    good = str(files / "good.sdf")
    assert_one_line_error(molgen("compare", good, cwd=tmp_path), "at least 2")
    assert_one_line_error(molgen("compare", good, "nothing-here", cwd=tmp_path), "not a file")
    for spec, message in (("pretrained:nope", "no shipped model"), ("qm9:tset", "unknown QM9 split"),
                          ("0" * 32, "no MLflow run")):
        with pytest.raises(MolgenError, match=message):
            resolve_contenders([good, spec], n=5, seed=0, workdir=tmp_path / "w",
                               tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
