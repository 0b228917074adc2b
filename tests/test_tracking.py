"""MLflow glue (molgen.tracking) against the local default store and a real tracking server, and the
PNG figures of molgen.plots."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from molgen.errors import MolgenError
from molgen.tracking import (
    DEFAULT_ARTIFACTS,
    DEFAULT_DB,
    Tracker,
    download_artifact,
    flatten_params,
    get_run,
    resolve_tracking_uri,
)
from molgen.ui import ui_command, ui_url
from tests.mlflow_server import mlflow_server_uri  # noqa: F401  (session fixture)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CONFIG = {
    "model": {"family": "diffusion", "backbone": {"num_layers": 4, "scalar_dim": 64}},
    "train": {"lr": 1e-3, "steps": 10},
    "data": {"properties": ["gap", "mu"], "max_atoms": None},
    "notes": "x" * 7000,
}


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture
def local_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with no MLFLOW_TRACKING_URI: the embedded default store applies."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_resolve_tracking_uri(local_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = f"sqlite:///{local_cwd.resolve() / DEFAULT_DB}"
    assert resolve_tracking_uri() == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri() == "http://127.0.0.1:1"
    assert resolve_tracking_uri("sqlite:///other.db") == f"sqlite:///{local_cwd.resolve() / 'other.db'}"
    assert resolve_tracking_uri("runs/x.db") == f"sqlite:///{local_cwd.resolve() / 'runs/x.db'}"


def test_flatten_params() -> None:
    flat = flatten_params(CONFIG)
    assert flat["model.backbone.num_layers"] == "4"
    assert flat["train.lr"] == "0.001"
    assert flat["data.properties"] == "['gap', 'mu']"
    assert flat["data.max_atoms"] == "None"
    assert len(flat["notes"]) == 6000 and flat["notes"].endswith("[truncated]")
    assert flatten_params({"a": {}, "b c!": 1}) == {"a": "{}", "b c_": "1"}


def test_local_store_log_resume_read_back(local_cwd: Path) -> None:
    """New run in ./mlruns.db + ./mlartifacts, then --resume of the same run; read it all back."""
    with Tracker(experiment="molgen", run_name="first", tags={"family": "diffusion"}) as tracker:
        run_id = tracker.run_id
        tracker.log_params(CONFIG)
        tracker.log_params(CONFIG)  # idempotent
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                tracker.log_metrics({"loss": 1.0 / (step + 1), "nll": math.nan}, step=step)
        dropped = [w for w in caught if "not a finite number" in str(w.message)]
        assert len(dropped) == 1  # warned once per key, not once per step
        (local_cwd / "ckpt.pt").write_bytes(b"checkpoint")
        tracker.log_artifact(local_cwd / "ckpt.pt", artifact_path="checkpoints")
        tracker.log_text("CCO\nc1ccccc1\n", "samples/step_2.smi")

    assert (local_cwd / DEFAULT_DB).is_file()
    from mlflow.tracking import MlflowClient

    # MLflow 3's UI opens a molgen experiment on the model-training view, not the GenAI pages
    experiment = MlflowClient(f"sqlite:///{local_cwd / DEFAULT_DB}").get_experiment_by_name("molgen")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    artifacts = local_cwd / DEFAULT_ARTIFACTS / "molgen" / run_id / "artifacts"
    assert (artifacts / "checkpoints" / "ckpt.pt").read_bytes() == b"checkpoint"
    assert (artifacts / "samples" / "step_2.smi").is_file()

    resumed_config = {**CONFIG, "train": {"lr": 5e-4, "steps": 10}}
    with Tracker(run_id=run_id) as tracker:
        assert tracker.run_id == run_id and tracker.resumed
        tracker.log_params(resumed_config)
        tracker.log_metrics({"loss": 0.2}, step=3)
        tracker.log_metrics({"loss": 0.1}, step=4)

    client = _client(resolve_tracking_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert run.data.tags["family"] == "diffusion"
    assert run.data.tags["molgen.resumes"] == "1"
    params = run.data.params
    assert params["model.backbone.scalar_dim"] == "64"
    assert params["train.lr"] == "0.001"  # the original value stays
    assert params["resume.1.train.lr"] == "0.0005"  # the changed one is kept beside it
    assert "resume.1.train.steps" not in params  # unchanged values are not repeated
    assert _history(client, run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.2), (4, 0.1)]
    assert "nll" not in run.data.metrics
    assert {f.path for f in client.list_artifacts(run_id)} == {"checkpoints", "samples"}

    # the helpers read the same store through the default URI
    assert get_run(run_id).info.run_id == run_id
    got = download_artifact(run_id, "checkpoints/ckpt.pt", dst=local_cwd / "dl")
    assert got == local_cwd / "dl" / "ckpt.pt" and got.read_bytes() == b"checkpoint"


def test_status_on_exceptions_and_errors(local_cwd: Path) -> None:
    """FAILED / KILLED from the context manager; one-line errors for unknown runs and artifacts."""
    with pytest.raises(ValueError), Tracker() as failed:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), Tracker() as killed:
        raise KeyboardInterrupt
    with pytest.raises(SystemExit), Tracker() as terminated:
        raise SystemExit(143)  # what a SIGTERM handler may do
    with pytest.raises(SystemExit), Tracker() as exited:
        raise SystemExit(0)
    client = _client(resolve_tracking_uri())
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert client.get_run(terminated.run_id).info.status == "KILLED"
    assert client.get_run(exited.run_id).info.status == "FINISHED"

    uri = resolve_tracking_uri()
    for bad in ("xyz", "0" * 32, "../../etc"):
        with pytest.raises(MolgenError, match=f"no MLflow run '{bad}' in {uri}"):
            Tracker(run_id=bad)
        with pytest.raises(MolgenError, match="no MLflow run"):
            get_run(bad)
    with pytest.raises(MolgenError, match="has no artifact 'missing.txt'"):
        download_artifact(failed.run_id, "missing.txt")


def test_unknown_run_in_missing_store_creates_nothing(local_cwd: Path) -> None:
    with pytest.raises(MolgenError, match="no MLflow run 'abc'"):
        get_run("abc")
    assert not (local_cwd / DEFAULT_DB).exists()


def test_disabled_tracker_is_a_noop(local_cwd: Path) -> None:
    with Tracker(enabled=False) as tracker:
        assert tracker.run_id is None
        tracker.log_params(CONFIG)
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_artifact(local_cwd / "does-not-exist")
        tracker.log_text("x", "x.txt")
        tracker.set_tags({"a": 1})
    assert list(local_cwd.iterdir()) == []


def test_ui_command_for_local_store(local_cwd: Path) -> None:
    argv = ui_command(port=5123)
    uri = resolve_tracking_uri()
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--backend-store-uri") + 1] == uri
    artifact_root = (local_cwd.resolve() / DEFAULT_ARTIFACTS).as_uri()
    assert argv[argv.index("--default-artifact-root") + 1] == artifact_root
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "5123"
    with pytest.raises(MolgenError, match="its own UI"):
        ui_command("http://127.0.0.1:5000")


def test_ui_url_opens_molgen_runs_in_the_model_training_view(local_cwd: Path) -> None:
    """MLflow 3's UI starts in its GenAI view; the printed address asks for the training view."""
    uri = resolve_tracking_uri()
    base = "http://127.0.0.1:5123"
    assert ui_url(uri, base) == f"{base}/#/?workflowType=machine_learning"  # no store yet
    with Tracker(uri, experiment="molgen", run_name="x") as tracker:
        experiment_id = tracker.experiment_id
    assert ui_url(uri, base) == f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def test_real_server_over_http(mlflow_server_uri: str, tmp_path: Path) -> None:  # noqa: F811
    """Params, metrics and artifacts through a real `mlflow server` with proxied artifacts."""
    with Tracker(mlflow_server_uri, experiment="molgen-http", run_name="http") as tracker:
        run_id = tracker.run_id
        assert tracker.artifact_uri.startswith("mlflow-artifacts:")
        tracker.log_params(CONFIG)
        for step in range(3):
            tracker.log_metrics({"loss": 2.0 - step, "val/loss": 3.0 - step}, step=step)
        (tmp_path / "samples.sdf").write_text("fake sdf\n$$$$\n")
        tracker.log_artifact(tmp_path / "samples.sdf", artifact_path="samples")
    with Tracker(mlflow_server_uri, run_id=run_id) as tracker:
        tracker.log_params(CONFIG)
        tracker.log_metrics({"loss": -0.5}, step=3)

    client = _client(mlflow_server_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.family"] == "diffusion"
    assert not any(k.startswith("resume.") for k in run.data.params)
    assert _history(client, run_id, "loss") == [(0, 2.0), (1, 1.0), (2, 0.0), (3, -0.5)]
    assert _history(client, run_id, "val/loss")[-1] == (2, 1.0)

    got = download_artifact(
        run_id, "samples/samples.sdf", tracking_uri=mlflow_server_uri, dst=tmp_path / "dl"
    )
    assert got.read_text() == "fake sdf\n$$$$\n"
    with pytest.raises(MolgenError, match=f"no MLflow run '{'f' * 32}' in {mlflow_server_uri}"):
        get_run("f" * 32, tracking_uri=mlflow_server_uri)


def test_unreachable_server_is_a_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MolgenError, match="cannot reach the MLflow tracking server"):
        Tracker(f"http://127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_molecule_grid_png(tmp_path: Path) -> None:
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from molgen.plots import molecule_grid_png

    mol3d = Chem.AddHs(Chem.MolFromSmiles("CC(=O)O"))
    AllChem.EmbedMolecule(mol3d, randomSeed=0)
    mols = [Chem.MolFromSmiles("CCO"), None, mol3d, Chem.MolFromSmiles("c1ccccc1")]
    assert molecule_grid_png(mols, tmp_path / "grid.png", legends=["a", "b", "c", "d"]) == 3
    _assert_png(tmp_path / "grid.png")
    assert mol3d.GetNumConformers() == 1 and mol3d.GetConformer().Is3D()  # caller's mol untouched
    assert molecule_grid_png(mols, tmp_path / "two.png", n=2) == 2

    assert molecule_grid_png([None, None], tmp_path / "none.png") == 0
    _assert_png(tmp_path / "none.png")


def test_curves_and_histograms_png(tmp_path: Path) -> None:
    from molgen.plots import loss_curve_png, property_histograms_png

    history = {
        "loss": [(i, 5.0 * 0.9**i) for i in range(50)],
        "val/loss": [(0, 4.0), (25, math.nan), (49, 0.1)],
    }
    loss_curve_png(history, tmp_path / "loss.png")
    loss_curve_png({}, tmp_path / "empty_loss.png")
    rng = np.random.default_rng(0)
    property_histograms_png(
        {"gap": rng.normal(6.5, 1.0, 200), "mu": rng.gamma(2.0, 1.0, 200)},
        {"gap": rng.normal(6.8, 1.2, 500), "mu": rng.gamma(2.0, 1.2, 500), "alpha": [75.0] * 5},
        tmp_path / "hist.png",
    )
    property_histograms_png({}, {}, tmp_path / "empty_hist.png")
    for name in ("loss", "empty_loss", "hist", "empty_hist"):
        _assert_png(tmp_path / f"{name}.png")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_read_only_store_is_one_line(tmp_path: Path) -> None:
    """A store molgen cannot write (here an immutable SQLite file): one line, no SQL, no traceback."""
    import os
    import shutil
    import subprocess
    import sys

    smi = tmp_path / "two.smi"
    smi.write_text("CCO\nCCN\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    cmd = [sys.executable, "-m", "molgen", "benchmark", str(smi), "--metrics", "basic"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    db = tmp_path / "mlruns.db"
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)]).returncode != 0:
        pytest.skip("cannot make the store read-only here")
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    finally:
        subprocess.run(["chattr", "-i", str(db)])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "SQL" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and "read-only" in lines[-1], proc.stderr


def test_two_first_runs_race_to_create_the_store(tmp_path: Path) -> None:
    """Two processes opening a new SQLite store at once both succeed (its creation is locked)."""
    import os
    import subprocess
    import sys

    code = ("from molgen.tracking import Tracker\n"
            "t = Tracker(None, 'molgen', run_name='racer'); t.finish(); print(t.run_id)")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("molgen")
    assert len(client.search_runs([experiment.experiment_id])) == 3
