"""The training loop end to end: DDP with two CPU processes, and a real MLflow server over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.mlflow_server import mlflow_server_uri  # noqa: F401  (session fixture)


def _env(qm9_cache: str, **extra: str) -> dict:
    return {**os.environ, "MOLGEN_CACHE": qm9_cache, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": "", **extra}


def _run_id(stdout: str) -> str:
    return next(line.split()[2] for line in stdout.splitlines() if line.startswith("MLflow run:"))


def test_ddp_two_cpu_processes(tmp_path: Path, qm9_cache: str) -> None:
    """torchrun with 2 gloo processes trains, one MLflow run, one checkpoint, identical replicas."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "molgen",
         "train", "--model", "diffusion", "--preset", "tiny", "--steps", "12"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(qm9_cache),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("MLflow run:") == 1  # only rank 0 reports
    run_id = _run_id(proc.stdout)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(run_id)
    assert run.data.params["world_size"] == "2"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert max(steps) == 12

    import torch

    ckpt = torch.load(tmp_path / "outputs" / run_id / "last.pt", weights_only=False)
    assert ckpt["step"] == 12


def test_train_against_real_mlflow_server(tmp_path: Path, qm9_cache: str, mlflow_server_uri: str) -> None:  # noqa: F811
    proc = subprocess.run(
        [sys.executable, "-m", "molgen", "train", "--model", "diffusion", "--preset", "tiny", "--condition", "mu",
         "--tracking-uri", mlflow_server_uri],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(qm9_cache),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = _run_id(proc.stdout)
    assert not (tmp_path / "mlruns.db").exists()  # nothing went to the local default store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.properties"] == "['mu']"
    assert "sample/validity" in run.data.metrics and "val/loss" in run.data.metrics
    assert len(client.get_metric_history(run_id, "train/loss")) >= 4
    names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "samples")}
    assert {"checkpoints", "loss_curve.png", "samples/samples.sdf", "samples/samples.smi", "samples/samples_grid.png"} <= names
    # the checkpoint comes back over HTTP and generates
    out = tmp_path / "gen.sdf"
    gen = subprocess.run(
        [sys.executable, "-m", "molgen", "generate", "--run", run_id, "--tracking-uri", mlflow_server_uri, "-n", "3",
         "--steps", "3", "--target", "mu=1.5D", "--out", str(out)],
        cwd=tmp_path / "..", capture_output=True, text=True, timeout=600, env=_env(qm9_cache),
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert out.read_text().count("$$$$") == 3


def test_resume_a_carried_checkpoint_in_another_store(tmp_path: Path, qm9_cache: str) -> None:
    """A CPU campaign across sessions: the checkpoint travels, the MLflow store does not. Resuming
    continues the step count in a new run tagged with the old one, instead of failing."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    common = ["-m", "molgen", "train", "--model", "diffusion", "--preset", "tiny"]
    proc = subprocess.run([sys.executable, *common, "--steps", "4"], cwd=first, capture_output=True, text=True,
                          timeout=600, env=_env(qm9_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    old_run = _run_id(proc.stdout)
    ckpt = first / "outputs" / old_run / "last.pt"
    proc = subprocess.run([sys.executable, "-m", "molgen", "train", "--steps", "6", "--resume", str(ckpt)], cwd=second,
                          capture_output=True, text=True, timeout=600, env=_env(qm9_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not in this tracking store" in proc.stdout + proc.stderr
    new_run = _run_id(proc.stdout)
    assert new_run != old_run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{second}/mlruns.db")
    run = client.get_run(new_run)
    assert run.data.tags["molgen.resumed_from"] == old_run
    steps = [m.step for m in client.get_metric_history(new_run, "train/loss")]
    assert steps and min(steps) > 4 and max(steps) == 6  # the step count continued


def test_resume_with_set_branches_into_a_new_run(tmp_path: Path, qm9_cache: str) -> None:
    """``--resume CKPT --set KEY=VALUE``: the state continues with the changed config in a new run
    (tag ``molgen.branched_from``), and the original run is left as it was; ``--chunk-steps`` ends
    the chunk early with the run's schedule (``--steps``) unchanged."""
    common = ["-m", "molgen", "train", "--model", "diffusion", "--preset", "tiny"]
    proc = subprocess.run([sys.executable, *common, "--steps", "4"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=_env(qm9_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    old_run = _run_id(proc.stdout)
    ckpt = tmp_path / "outputs" / old_run / "last.pt"
    before = ckpt.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "molgen", "train", "--resume", str(ckpt), "--steps", "10",
                           "--chunk-steps", "2", "--set", "family.time_beta=3", "--set", "train.out_dir=branch"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(qm9_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    new_run = _run_id(proc.stdout)
    assert new_run != old_run and ckpt.read_bytes() == before
    assert "chunk ended at step 6" in proc.stdout  # --chunk-steps: 2 more steps of a 10-step schedule
    from mlflow.tracking import MlflowClient

    from molgen.checkpoint import load_checkpoint

    run = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db").get_run(new_run)
    assert run.data.tags["molgen.branched_from"] == old_run and run.data.params["family.time_beta"] == "3.0"
    branch = load_checkpoint(tmp_path / "branch" / new_run / "last.pt")
    assert branch["step"] == 6 and branch["config"]["family"]["time_beta"] == 3.0
    assert branch["config"]["train"]["steps"] == 10
