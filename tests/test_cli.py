"""The CLI contract and bad input: one line on stderr, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from molgen.targets import parse_target
from molgen.errors import MolgenError

REPO = Path(__file__).resolve().parent.parent


def molgen(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "molgen", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines, "no error message"
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture()
def env(qm9_cache: str) -> dict:
    return {"MOLGEN_CACHE": qm9_cache, "MLFLOW_TRACKING_URI": ""}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, qm9_cache) -> dict:
    """One tiny conditional run shared by the generate / checkpoint tests."""
    cwd = tmp_path_factory.mktemp("trained")
    proc = molgen("train", "--model", "diffusion", "--preset", "tiny", "--condition", "gap", cwd=cwd,
                  env={"MOLGEN_CACHE": qm9_cache, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = next(line.split()[2] for line in proc.stdout.splitlines() if line.startswith("MLflow run:"))
    return {"cwd": cwd, "run_id": run_id, "checkpoint": cwd / "outputs" / run_id / "last.pt", "stdout": proc.stdout}


def test_version(tmp_path) -> None:
    proc = molgen("--version", cwd=tmp_path)
    assert proc.returncode == 0 and "molgen" in proc.stdout


def test_train_prints_where_to_look(trained) -> None:
    out = trained["stdout"]
    assert "MLflow run:" in out and "checkpoint:" in out and "samples:" in out and "sample/validity" in out
    assert (trained["cwd"] / "mlruns.db").is_file()
    assert (trained["cwd"] / "outputs" / trained["run_id"] / "samples.sdf").is_file()


@pytest.mark.parametrize("suffix", [".sdf", ".xyz", ".smi"])
def test_generate_from_run(trained, suffix: str) -> None:
    out = trained["cwd"] / f"gen{suffix}"
    proc = molgen("generate", "--run", trained["run_id"], "-n", "5", "--target", "gap=7eV", "--steps", "5",
                  "--out", str(out), cwd=trained["cwd"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and "validity" in proc.stdout and "wrote 5 molecules" in proc.stdout


def test_generate_from_checkpoint_with_units(trained, tmp_path) -> None:
    out = tmp_path / "x.sdf"
    proc = molgen("generate", "--checkpoint", str(trained["checkpoint"]), "-n", "3", "--target", "gap=250meV",
                  "--steps", "3", "--guidance", "1.5", "--n-atoms", "9", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_text().count("$$$$") == 3


def test_data_qm9(tmp_path, env) -> None:
    proc = molgen("data", "qm9", cwd=tmp_path, env=env)
    assert proc.returncode == 0
    assert "130831" in proc.stdout.replace(",", "") and "gap" in proc.stdout


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--model", "gan"], ["gan"]),
        (["train", "--model", "diffusion", "--set", "train.nope=1"], ["unknown config key 'train.nope'"]),
        (["train", "--model", "diffusion", "--set", "train.lr=fast"], ["train.lr", "expected a number"]),
        (["train", "--model", "diffusion", "--set", "backbone.num_layers=2.5"], ["backbone.num_layers"]),
        (["train", "--model", "diffusion", "--condition", "colour"], ["unknown property 'colour'"]),
        (["train", "--model", "diffusion", "--preset", "huge"], ["unknown preset 'huge'"]),
        (["train", "--model", "diffusion", "--config", "missing.yaml"], ["config file not found"]),
        (["train", "--resume", "0123456789abcdef0123456789abcdef"], ["0123456789abcdef0123456789abcdef"]),
        (["train", "--model", "ebm", "--preset", "tiny", "--set", "train.compile=true"], ["train.compile", "'ebm'"]),
        (["train", "--model", "diffusion", "--set", "train.lr=-1"], ["train.lr must be a positive number"]),
        (["train", "--model", "diffusion", "--set", "train.grad_clip=-2"], ["train.grad_clip"]),
        (["ui", "--port", "99999"], ["99999"]),
        (["benchmark", "x.smi", "--jobs", "0"], ["--jobs"]),
    ],
)
def test_train_bad_input(args, fragments, tmp_path, env) -> None:
    assert_one_line_error(molgen(*args, cwd=tmp_path, env=env), *fragments)


def test_malformed_config_file(tmp_path, env) -> None:
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    assert_one_line_error(molgen("train", "--model", "diffusion", "--config", "bad.yaml", cwd=tmp_path, env=env),
                          "malformed YAML")


@pytest.mark.parametrize(
    "target, fragments",
    [
        ("gap", ["malformed --target"]),
        ("gap=abc", ["malformed --target"]),
        ("colour=3", ["unknown property 'colour'"]),
        ("gap=3D", ["unit 'D' does not fit property 'gap'"]),
        ("gap=-4eV", ["outside the physical range"]),
        ("mu=2", ["not trained on 'mu'", "supports: gap"]),
    ],
)
def test_generate_bad_target(target, fragments, trained, tmp_path) -> None:
    out = tmp_path / "x.sdf"
    proc = molgen("generate", "--checkpoint", str(trained["checkpoint"]), "-n", "2", "--target", target,
                  "--steps", "2", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert not out.exists()


def test_generate_bad_n_atoms_and_outputs(trained, tmp_path) -> None:
    ckpt = str(trained["checkpoint"])
    assert_one_line_error(molgen("generate", "--checkpoint", ckpt, "-n", "2", "--n-atoms", "400", "--out",
                                 str(tmp_path / "x.sdf"), cwd=tmp_path), "--n-atoms must be between")
    assert_one_line_error(molgen("generate", "--checkpoint", ckpt, "-n", "2", "--out", str(tmp_path / "x.pdf"),
                                 cwd=tmp_path), "--out must end in")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(molgen("generate", "--checkpoint", ckpt, "-n", "2", "--steps", "2", "--out",
                                 str(blocker / "sub" / "x.sdf"), cwd=tmp_path), "cannot write")


def test_missing_and_corrupted_checkpoint(tmp_path) -> None:
    out = str(tmp_path / "x.sdf")
    assert_one_line_error(molgen("generate", "--checkpoint", "nope.pt", "-n", "2", "--out", out, cwd=tmp_path),
                          "checkpoint not found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(molgen("generate", "--checkpoint", str(bad), "-n", "2", "--out", out, cwd=tmp_path),
                          "corrupted or unreadable checkpoint")
    truncated = tmp_path / "truncated.pt"
    assert_one_line_error(molgen("generate", "--run", "0" * 32, "-n", "2", "--out", out, cwd=tmp_path),
                          "no MLflow run")
    assert not truncated.exists() and not Path(out).exists()


def test_parse_target_units() -> None:
    assert parse_target("gap=6.5eV") == ("gap", 6.5)
    assert parse_target("gap=250 meV")[1] == pytest.approx(0.25)
    assert parse_target("homo=-0.25Ha")[1] == pytest.approx(-0.25 * 27.211386)
    assert parse_target("mu=2.0D") == ("mu", 2.0)
    assert parse_target("Cv=30cal/mol/K") == ("Cv", 30.0)
    assert parse_target("alpha=75Bohr^3") == ("alpha", 75.0)
    with pytest.raises(MolgenError):
        parse_target("alpha=75eV")


def test_ctrl_c_keeps_a_resumable_checkpoint(tmp_path, env) -> None:
    """SIGINT mid-training: checkpoint written, one-line message, exit 130, --resume finishes the run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "molgen", "train", "--model", "diffusion", "--preset", "tiny", "--steps", "100000"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )
    outputs = tmp_path / "outputs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(outputs.glob("*/last.pt")):  # first periodic checkpoint
        time.sleep(0.5)
    assert list(outputs.glob("*/last.pt")), "no checkpoint appeared"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1]
    assert "interrupted at step" in last and "--resume" in last
    run_id = last.split("--resume ")[1].strip()
    assert not list(outputs.glob("*/.*.tmp"))  # nothing half-written
    resumed = molgen("train", "--resume", run_id, "--steps", "30", cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"MLflow run:  {run_id}" in resumed.stdout  # same MLflow run continued


def test_evaluate_logs_into_the_run(trained) -> None:
    proc = molgen("evaluate", "--run", trained["run_id"], "-n", "6", "--steps", "3", "--nll-molecules", "16",
                  cwd=trained["cwd"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eval/validity" in proc.stdout and "eval/test_nll" in proc.stdout
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{trained['cwd']}/mlruns.db").get_run(trained["run_id"])
    assert "eval/test_nll" in run.data.metrics and "eval/novelty" in run.data.metrics
    assert run.info.status == "FINISHED"


def test_generate_warns_outside_central_99_percent(trained, tmp_path) -> None:
    proc = molgen("generate", "--checkpoint", str(trained["checkpoint"]), "-n", "2", "--steps", "2",
                  "--target", "gap=25eV", "--out", str(tmp_path / "x.sdf"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "outside the central 99%" in proc.stderr


@pytest.fixture(scope="module")
def tiny_oracle(tmp_path_factory) -> str:
    """A small random-init oracle, so these tests do not depend on the shipped weights."""
    import torch

    from molgen.config import BackboneConfig
    from molgen.oracle import ORACLE_PROPERTIES, PropertyOracle

    torch.manual_seed(0)
    bcfg = BackboneConfig(num_layers=1, scalar_dim=16, vector_dim=4, edge_dim=8, graph_dim=16, cond_dim=8, num_rbf=8)
    oracle = PropertyOracle(bcfg, ORACLE_PROPERTIES, [75.0, 6.8, -6.5, 0.3, 2.7, 31.6], [8.2, 1.3, 0.6, 1.3, 1.5, 4.1])
    return str(oracle.save(tmp_path_factory.mktemp("oracle") / "oracle.pt"))


def test_generate_scores_targets_with_the_oracle(trained, tiny_oracle, tmp_path) -> None:
    import csv

    out = tmp_path / "x.csv"
    proc = molgen("generate", "--checkpoint", str(trained["checkpoint"]), "-n", "6", "--steps", "3",
                  "--target", "gap=6.5eV", "--tol", "gap=300meV", "--out", str(out), cwd=tmp_path,
                  env={"MOLGEN_ORACLE": tiny_oracle})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mae/gap" in proc.stdout and "hit_rate" in proc.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    for row in rows:  # prediction and error to target, per molecule
        assert abs(float(row["oracle_gap"]) - 6.5 - float(row["error_gap"])) < 1e-3
        assert float(row["target_gap"]) == 6.5
    mae = float(next(line.split()[1] for line in proc.stdout.splitlines() if "mae/gap" in line))
    assert abs(mae - sum(abs(float(r["error_gap"])) for r in rows) / 6) < 1e-3


@pytest.mark.parametrize("args, fragments", [
    (("--sample-opt", "nonsense=1"), ("does not take sampler option", "nonsense")),
    (("--sample-opt", "novalue"), ("malformed --sample-opt",)),
    (("--tol", "gap"), ("malformed --tol",)),
    (("--scaffold", "c1ccccc1"), ("does not take sampler option", "scaffold")),
])
def test_generate_bad_sampler_options(args, fragments, trained, tmp_path) -> None:
    proc = molgen("generate", "--checkpoint", str(trained["checkpoint"]), "-n", "2", "--steps", "2", *args,
                  "--out", str(tmp_path / "x.sdf"), cwd=tmp_path)
    assert_one_line_error(proc, *fragments)


def test_edm_conditional_protocol_end_to_end(trained, tiny_oracle) -> None:
    env = {"MOLGEN_ORACLE": tiny_oracle}
    proc = molgen("evaluate", "--run", trained["run_id"], "--protocol", "edm-conditional", "--property", "gap",
                  "-n", "8", "--steps", "3", cwd=trained["cwd"], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for row in ("Naive (shuffled labels, upper bound)", "#Atoms", "molgen diffusion", "lower bound",
                "without coordinates, not scored"):
        assert row in proc.stdout
    assert "not 'db'" in proc.stdout  # the fixture run was trained on the full training split
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(f"sqlite:///{trained['cwd']}/mlruns.db").get_run(trained["run_id"]).data.metrics
    assert {"cond/gap/model", "cond/gap/naive", "cond/gap/n_atoms", "cond/gap/lower_bound"} <= set(metrics)
    # bad input: no property, a property the run was not trained on
    proc = molgen("evaluate", "--run", trained["run_id"], "--protocol", "edm-conditional", cwd=trained["cwd"], env=env)
    assert_one_line_error(proc, "needs --property")
    proc = molgen("evaluate", "--run", trained["run_id"], "--protocol", "edm-conditional", "--property", "mu",
                  "-n", "2", cwd=trained["cwd"], env=env)
    assert_one_line_error(proc, "not trained on 'mu'", "supports: gap")
    # sampler options reach the family's sample(); one it does not take is a one-line error
    proc = molgen("evaluate", "--run", trained["run_id"], "--protocol", "edm-conditional", "--property", "gap",
                  "-n", "2", "--sample-opt", "temperature=0.8", cwd=trained["cwd"], env=env)
    assert_one_line_error(proc, "does not take sampler option(s) temperature")
    proc = molgen("evaluate", "--run", trained["run_id"], "--sample-opt", "temperature=0.8", cwd=trained["cwd"], env=env)
    assert_one_line_error(proc, "--sample-opt applies to --protocol edm-conditional and gdss only")


# ---------------------------------------------------------------------------------- checkpoint lookup


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--model", "diffusion", "--set", "data.dataset=zinc"], ["unknown dataset 'zinc' (available: qm9)"]),
        (["train", "--resume", ".."], ["invalid run id '..'"]),
        (["generate", "--run", "../..", "-n", "2", "--out", "x.sdf"], ["invalid run id '../..'"]),
        (["generate", "--run", "a/b", "-n", "2", "--out", "x.sdf"], ["invalid run id 'a/b'"]),
    ],
)
def test_bad_run_id_and_dataset(args, fragments, tmp_path, env) -> None:
    assert_one_line_error(molgen(*args, cwd=tmp_path, env=env), *fragments)
    assert not (tmp_path / "x.sdf").exists()


def test_run_id_cannot_walk_out_of_outputs(tmp_path) -> None:
    from molgen.checkpoint import locate_checkpoint
    from molgen.resume import resolve_resume

    (tmp_path / "last.pt").write_bytes(b"not reachable")
    out_dir = tmp_path / "a" / "b"
    out_dir.mkdir(parents=True)
    for run_id in ("../..", "..", "a/b", "a\\b", ""):
        with pytest.raises(MolgenError, match="invalid run id") as exc:
            with locate_checkpoint(run_id=run_id, out_dir=out_dir):
                pass
        assert "\n" not in str(exc.value)
    with pytest.raises(MolgenError, match="invalid run id"):
        with resolve_resume("..", str(out_dir), None):
            pass


def _fake_download(monkeypatch, source: Path) -> list[Path]:
    """Make MLflow downloads copy ``source`` into the requested folder; returns the folders used."""
    import shutil

    from molgen import tracking

    used: list[Path] = []

    def download(run_id, artifact_path, tracking_uri=None, dst=None):  # noqa: ANN001
        assert artifact_path == "checkpoints/last.pt"
        used.append(Path(dst))
        return Path(shutil.copy(source, Path(dst) / "last.pt"))

    monkeypatch.setattr(tracking, "download_artifact", download)
    return used


def test_downloaded_checkpoint_folder_is_removed(tmp_path, monkeypatch) -> None:
    from molgen.checkpoint import CHECKPOINT_NAME, locate_checkpoint

    source = tmp_path / "source.pt"
    source.write_bytes(b"weights")
    used = _fake_download(monkeypatch, source)
    with locate_checkpoint(run_id="0123abcd", out_dir=tmp_path / "outputs") as path:
        assert path.name == CHECKPOINT_NAME and path.read_bytes() == b"weights"
    assert len(used) == 1 and not used[0].exists()
    # a local copy in outputs/<run>/ wins and is left alone
    local = tmp_path / "outputs" / "0123abcd" / CHECKPOINT_NAME
    local.parent.mkdir(parents=True)
    local.write_bytes(b"local")
    with locate_checkpoint(run_id="0123abcd", out_dir=tmp_path / "outputs") as path:
        assert path == local
    assert local.is_file() and len(used) == 1


def test_load_model_from_a_downloaded_run_cleans_up(trained, tmp_path, monkeypatch) -> None:
    from molgen.generate import load_model

    used = _fake_download(monkeypatch, trained["checkpoint"])
    monkeypatch.chdir(tmp_path)  # no outputs/<run>/ here: the artifact is "downloaded"
    model = load_model(run_id=trained["run_id"], device="cpu")
    assert list(model.properties) == ["gap"]
    assert len(used) == 1 and not used[0].exists()


def test_unwritable_out_dir_is_found_before_training(tmp_path, env) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = molgen("train", "--model", "diffusion", "--preset", "tiny", "--set", f"train.out_dir={blocker}/sub",
                  cwd=tmp_path, env=env)
    assert_one_line_error(proc, "cannot write checkpoints to")
    assert "train diffusion" not in proc.stderr  # no training step ran


def test_resume_refuses_flags_its_checkpoint_decides(trained, tmp_path, env) -> None:
    ckpt = str(trained["checkpoint"])
    proc = molgen("train", "--resume", ckpt, "--condition", "gap", "--steps", "99", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "--condition do not apply with --resume", "--set KEY=VALUE branches")
    proc = molgen("train", "--resume", ckpt, "--steps", "99", "--set", "backbone.layers=9", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "a branch keeps the checkpoint's network")
    proc = molgen("train", "--resume", ckpt, "--steps", "99", "--chunk-steps", "0", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "--chunk-steps must be positive")
    proc = molgen("train", "--model", "diffusion", "--chunk-steps", "5", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "--chunk-steps applies with --resume")


def test_resume_with_nothing_left_to_train(trained, tmp_path, env) -> None:
    proc = molgen("train", "--resume", str(trained["checkpoint"]), cwd=tmp_path, env=env)
    assert_one_line_error(proc, "nothing to train", "--steps N")
    proc = molgen("train", "--resume", str(trained["checkpoint"]), "--steps", "0", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "train.steps must be positive")


def test_guidance_that_is_not_finite_or_huge(trained, tmp_path) -> None:
    ckpt, out = str(trained["checkpoint"]), tmp_path / "x.sdf"
    proc = molgen("generate", "--checkpoint", ckpt, "-n", "2", "--steps", "2", "--target", "gap=6.5eV",
                  "--guidance", "nan", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, "--guidance must be a finite number")
    # a huge weight makes the sampler diverge: the molecules are counted invalid, nothing crashes
    proc = molgen("generate", "--checkpoint", ckpt, "-n", "2", "--steps", "2", "--target", "gap=6.5eV",
                  "--guidance", "1e300", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert out.is_file()
