"""MLflow models and the 3D viewer: a training run logs a loader-module pyfunc model (no pickles) that
``mlflow.pyfunc.load_model`` predicts with and ``molgen generate --model-uri`` loads through molgen's
safe path; a model naming any other loader is refused without importing it; the viewer is offline."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from molgen.chem.elements import Molecule3D
from tests.test_cli import molgen

MODEL_NAME = "molgen-gap"


@pytest.fixture(scope="module")
def logged(tmp_path_factory, qm9_cache) -> dict:
    """One tiny gap-conditioned diffusion run (2 steps, in-process) with its model registered as
    ``models:/molgen-gap/1``."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    from molgen.config import resolve_config
    from molgen.models.registry import get_family
    from molgen.train import train

    root = tmp_path_factory.mktemp("mlflow_model")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = {"train": {"steps": 2, "out_dir": str(root / "outputs")},
                 "data": {"properties": ["gap"], "cache_dir": qm9_cache}}
    cfg = resolve_config("diffusion", get_family("diffusion").config_cls, preset="tiny", overrides=overrides)
    result = train(cfg, tracking_uri=uri, progress=False, log=lambda *a: None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "_tracking_uri", uri)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        version = mlflow.register_model(f"runs:/{result.run_id}/model", MODEL_NAME)
    return {"root": root, "uri": uri, "run_id": result.run_id, "checkpoint": result.checkpoint,
            "version": version.version}


@pytest.fixture()
def global_uri(logged, monkeypatch) -> str:
    """MLflow's global tracking URI pointing at the fixture's store for one test (then restored)."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", logged["uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged["uri"])
    return logged["uri"]


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    """``molgen ARGS`` in this process: exit code and the non-empty stderr lines."""
    from molgen.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_training_logs_a_loader_module_model(logged, global_uri, tmp_path) -> None:
    from mlflow.artifacts import download_artifacts

    from molgen.checkpoint import load_checkpoint

    client = _client(logged["uri"])
    run = client.get_run(logged["run_id"])
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.experiment_id == run.info.experiment_id
    assert model.source_run_id == logged["run_id"] and output.step == 2
    assert {m.key for m in model.metrics} >= {"train/loss", "sample/validity"}  # the run's final metrics
    folder = client.download_artifacts(logged["run_id"], "", str(tmp_path / "run"))
    assert (tmp_path / "run" / "samples" / "samples_viewer.html").is_file(), folder
    local = download_artifacts(artifact_uri=f"models:/{output.model_id}", dst_path=str(tmp_path / "model"),
                               tracking_uri=logged["uri"])
    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert "MLmodel" in files and "data/checkpoint.pt" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]
    meta = yaml.safe_load((tmp_path / "model" / "MLmodel").read_text())
    pyfunc = meta["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "molgen.mlflow_model" and pyfunc["data"] == "data/checkpoint.pt"
    assert "python_model" not in pyfunc and "cloudpickle_version" not in pyfunc
    slim = load_checkpoint(tmp_path / "model" / "data" / "checkpoint.pt")  # weights_only + integrity digest
    assert "optimizer" not in slim and slim["stats"]["properties"] == ["gap"]
    assert "gap" in meta["signature"]["inputs"] and "steps" in meta["signature"]["params"]


def test_pyfunc_load_model_predicts_molecules(logged, global_uri) -> None:
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{logged['version']}")
    out = model.predict(pd.DataFrame({"n": [3, 1], "seed": [0, 1], "gap": ["6.5eV", None]}), params={"steps": 3})
    assert list(out.columns) == ["request", "smiles", "n_atoms", "valid"] and len(out) == 4
    assert out["request"].tolist() == [0, 0, 0, 1] and (out["n_atoms"] > 0).all()
    assert (out["valid"] == out["smiles"].notna()).all()
    again = mlflow.pyfunc.load_model(f"runs:/{logged['run_id']}/model")
    assert len(again.predict(pd.DataFrame({"n": [2], "gap": [6.5]}), params={"steps": 2})) == 2


def test_predict_rejects_bad_input_with_one_line(logged) -> None:
    import pandas as pd

    from molgen.errors import MolgenError
    from molgen.mlflow_model import _load_pyfunc

    model = _load_pyfunc(str(logged["checkpoint"]))
    for frame, fragment in (({"n": [0]}, "between 1"), ({"n": [2], "mu": ["2D"]}, "unknown input column"),
                            ({"seed": [1]}, "column 'n'"), ({"n": [1], "gap": ["6.5D"]}, "unit 'D'"),
                            ({"n": [1.5]}, "integer")):
        with pytest.raises(MolgenError, match=fragment):
            model.predict(pd.DataFrame(frame))
    with pytest.raises(MolgenError, match="unknown param"):
        model.predict(pd.DataFrame({"n": [1]}), params={"temperature": 1})


def test_generate_from_registered_model_uri(logged, tmp_path) -> None:
    out = tmp_path / "x.smi"
    proc = molgen("generate", "--model-uri", f"models:/{MODEL_NAME}/1", "-n", "4", "--steps", "3",
                  "--tracking-uri", logged["uri"], "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 4 molecules" in proc.stdout and len(out.read_text().splitlines()) == 4
    assert not list(tmp_path.glob("molgen-model-*"))


@pytest.mark.parametrize("uri, fragment", [
    ("foo", "invalid --model-uri"),
    (f"models:/{MODEL_NAME}", "name a version or an alias"),
    ("models:/no-such-model/1", "no-such-model not found"),
    (f"models:/{MODEL_NAME}/9", "version=9) not found"),
    ("runs:/0123abcd/model", "not found"),
])
def test_bad_model_uri_is_one_line(uri, fragment, logged, tmp_path, capsys) -> None:
    code, lines = _cli(capsys, "generate", "--model-uri", uri, "-n", "1", "--tracking-uri", logged["uri"],
                       "--out", str(tmp_path / "x.smi"))
    assert code != 0 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "x.smi").exists()


def test_model_uri_excludes_other_sources(logged, tmp_path, capsys) -> None:
    code, lines = _cli(capsys, "generate", "--model-uri", f"models:/{MODEL_NAME}/1", "--run", logged["run_id"],
                       "--out", str(tmp_path / "x.smi"))
    assert code != 0 and len(lines) == 1 and "exactly one of" in lines[0] and "--model-uri" in lines[0]


class _Touch:
    """Unpickling this object would create ``path`` (proof that a pickle was loaded)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("flavor", ["foreign_module", "cloudpickle"])
def test_model_naming_another_loader_is_refused_unimported(flavor, logged, tmp_path, monkeypatch, capsys) -> None:
    marker = tmp_path / "code-ran"
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "molgen_probe_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef _load_pyfunc(p): pass\n")
    monkeypatch.syspath_prepend(str(probe))
    model = tmp_path / "evil"
    (model / "data").mkdir(parents=True)
    (model / "python_model.pkl").write_bytes(pickle.dumps(_Touch(str(marker))))
    (model / "data" / "checkpoint.pt").write_bytes(pickle.dumps(_Touch(str(marker))))
    pyfunc = ({"loader_module": "molgen_probe_evil", "data": "data/checkpoint.pt"} if flavor == "foreign_module"
              else {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"})
    (model / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": pyfunc}}))
    client = _client(logged["uri"])
    run = client.create_run(client.get_run(logged["run_id"]).info.experiment_id)
    client.log_artifacts(run.info.run_id, str(model), "evil")
    code, lines = _cli(capsys, "generate", "--model-uri", f"runs:/{run.info.run_id}/evil", "-n", "1",
                       "--tracking-uri", logged["uri"], "--out", str(tmp_path / "x.smi"))
    assert code != 0 and len(lines) == 1 and "refused" in lines[0] and "molgen.mlflow_model" in lines[0], lines
    assert not marker.exists() and "molgen_probe_evil" not in sys.modules


def test_model_logging_failure_is_a_one_line_warning(logged, tmp_path, capsys) -> None:
    from molgen.tracking import Tracker

    with Tracker(logged["uri"], "molgen-tests") as tracker:
        assert tracker.log_model(tmp_path / "missing.pt", step=1) is None
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: could not log the MLflow model"), lines


def _mol(n: int, finite: bool = True, seed: int = 0) -> Molecule3D:
    pos = np.random.default_rng(seed).normal(size=(n, 3)) * 1.2
    if not finite:
        pos[:] = np.nan
    return Molecule3D(atom_types=np.array([1] + [0] * (n - 1)), positions=pos)


def test_viewer_is_offline_and_lists_finite_molecules(tmp_path) -> None:
    from molgen.viewer import write_viewer

    water = Molecule3D(atom_types=np.array([3, 0, 0]),
                       positions=np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]]))
    mols = [water, _mol(5, finite=False), _mol(4, seed=1), _mol(6, seed=2), _mol(3, finite=False)]
    page = write_viewer(mols, tmp_path / "v.html", title="a <b> test").read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I) and "<link" not in page
    assert "http://" not in page and "https://" not in page and "<b>" not in page
    data = json.loads(re.search(r'<script id="molgen-data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert len(data["molecules"]) == 3 and "2 skipped" in page
    first = data["molecules"][0]
    assert [a[0] for a in first["atoms"]] == ["O", "H", "H"]
    assert sorted(b[:2] for b in first["bonds"]) == [[0, 1], [0, 2]]
    assert "H2O" in first["label"] and "O" in first["label"]
    many = json.loads(re.search(r'application/json">(.*?)</script>', write_viewer(
        [_mol(3, seed=i) for i in range(12)], tmp_path / "w.html").read_text(), re.S)[1])
    assert len(many["molecules"]) == 8  # a few molecules, not the whole sample
