"""Resumable oracle training: chunks follow one run's trajectory exactly, signals save, the script's
campaign guards, curve and JSON evaluation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from molgen.errors import MolgenError
from molgen.oracle_training import (EDM_LOWER_BOUND, OracleData, OracleTrainConfig, TrainingState, learning_rate,
                                    mean_abs_error, new_state, best_oracle, property_weights, switch_loss_weights,
                                    train_chunk, valid_score)

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small(tmp_path_factory, qm9_small_source):
    from molgen.data.qm9 import load_qm9

    return load_qm9(tmp_path_factory.mktemp("oracle_small_cache"), source_dir=qm9_small_source)


def _cfg(**kw) -> OracleTrainConfig:
    base = dict(layers=1, scalar_dim=8, vector_dim=2, batch_size=16, lr=3e-3, warmup_steps=2, total_steps=40,
                val_every=3, valid_n=16, max_train=50)  # 50 molecules: 4 batches per epoch, the last short
    return OracleTrainConfig(**{**base, **kw})


def test_chunks_follow_one_runs_trajectory(small, tmp_path) -> None:
    cfg = _cfg()
    data = OracleData(cfg, data=small)
    quiet = lambda s: None  # noqa: E731
    one = train_chunk(new_state(cfg, data), data, minutes=10, device=CPU, max_steps=11, log=quiet)
    first = train_chunk(new_state(cfg, data), data, minutes=10, device=CPU, max_steps=5, log=quiet)
    first.save(tmp_path / "state.pt")
    resumed = TrainingState.load(tmp_path / "state.pt")
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (5, 1, 1)  # 4 batches per epoch
    two = train_chunk(resumed, data, minutes=10, device=CPU, max_steps=6, log=quiet)
    assert (two.step, two.epoch, two.batch_in_epoch) == (one.step, one.epoch, one.batch_in_epoch) == (11, 2, 3)
    for k, v in one.model.items():
        assert torch.equal(v, two.model[k]), k
    assert [h["valid_score"] for h in one.history] == [h["valid_score"] for h in two.history]
    assert one.best_score == two.best_score and len(one.history) == 3


def test_learning_rate_schedule() -> None:
    cfg = _cfg(lr=1.0, warmup_steps=10, total_steps=100)
    assert learning_rate(cfg, 0) == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(0.0)).item()))
    assert learning_rate(cfg, 50) == pytest.approx(0.5)
    assert learning_rate(cfg, 100) == pytest.approx(0.0, abs=1e-12) and learning_rate(cfg, 500) == learning_rate(cfg, 100)


def test_sigterm_ends_a_chunk_with_its_state(small) -> None:
    cfg = _cfg(val_every=2)
    data = OracleData(cfg, data=small)
    before = signal.getsignal(signal.SIGTERM)
    state = train_chunk(new_state(cfg, data), data, minutes=10, device=CPU,
                        log=lambda s: os.kill(os.getpid(), signal.SIGTERM))
    assert state.stopped_by == "SIGTERM" and state.step == 2 and state.optimizer is not None
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back


def _script(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train_oracle.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)


def test_script_campaign(tmp_path, qm9_cache) -> None:
    env = {"MOLGEN_CACHE": qm9_cache}
    state = str(tmp_path / "state.pt")
    small = ["--layers", "1", "--scalar-dim", "8", "--vector-dim", "2", "--batch-size", "16", "--max-train", "48",
             "--valid-n", "16", "--val-every", "2", "--total-steps", "20"]
    proc = _script("--state", state, "--max-steps", "3", *small, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = _script("--state", state, "--max-steps", "3", env=env)
    assert again.returncode == 1 and "--resume" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    bad = _script("--state", state, "--resume", "--layers", "2", env=env)
    assert bad.returncode == 1 and "--layers" in bad.stderr
    oracle = str(tmp_path / "oracle.pt")
    proc = _script("--state", state, "--resume", "--max-steps", "2", "--eval-db", "--max-db", "40",
                   "--export", oracle, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = TrainingState.load(state)
    assert s.step == 5 and len(s.commands) == 2 and len(s.db_history) == 1 and s.db_history[0]["n_db"] == 40
    curve = _script("--state", state, "--curve", env=env)
    assert curve.returncode == 0 and "Db (all)" in curve.stdout and "| 4 |" in curve.stdout
    out = tmp_path / "mae.json"
    ev = _script("--evaluate", "--weights", oracle, "--max-db", "40", "--out", str(out), env=env)
    assert ev.returncode == 0, ev.stderr[-2000:]
    mae = json.loads(out.read_text())
    assert list(mae) == ["alpha", "gap", "homo", "lumo", "mu", "Cv"]
    # the exported oracle is the campaign's best, and --evaluate measures what --eval-db measured
    assert mae["gap"] == pytest.approx(1000 * s.db_history[0]["mae_db"]["gap"], rel=1e-5)
    from molgen.oracle import load_oracle

    assert load_oracle(oracle).meta["training"]["steps"] == 5


def test_edm_loss_weights_score_the_error_relative_to_edm() -> None:
    std = torch.tensor([8.0, 1.3, 0.6, 1.3, 1.5, 4.0])
    assert torch.equal(property_weights("std", std), torch.ones(6))
    w = property_weights("edm", std)
    edm = [0.10, 0.064, 0.039, 0.036, 0.043, 0.040]  # EDM's Table 3 lower-bound row, written out by hand
    ratio = [s / e for s, e in zip(std.tolist(), edm)]
    assert w.tolist() == pytest.approx([r / (sum(ratio) / 6) for r in ratio])
    # the "edm" score of an MAE vector is proportional to the mean of MAE / EDM's MAE
    mae_a = torch.tensor(edm) * 2  # exactly 2x EDM everywhere
    mae_b = torch.tensor(edm) * torch.tensor([7.0, 1, 1, 1, 1, 1])  # same mean ratio (2), other spread
    assert valid_score("edm", mae_a, std) == pytest.approx(valid_score("edm", mae_b, std))
    assert valid_score("edm", mae_a, std) == pytest.approx(2 * 6 / sum(ratio))
    assert list(EDM_LOWER_BOUND.values()) == pytest.approx(edm)
    with pytest.raises(MolgenError, match="loss_weights"):
        OracleTrainConfig(loss_weights="uniform")


def test_edm_weighted_branch_learns_and_rescoring_its_best(small) -> None:
    cfg = _cfg(val_every=4, total_steps=200)
    data = OracleData(cfg, data=small)
    quiet = lambda s: None  # noqa: E731
    state = train_chunk(new_state(cfg, data), data, minutes=10, device=CPU, max_steps=8, log=quiet)
    std = torch.as_tensor(data.stats.std, dtype=torch.float32)
    best_mae = mean_abs_error(best_oracle(state, data), data.valid, CPU)
    switch_loss_weights(state, data, "edm", CPU)
    assert state.config.loss_weights == "edm"
    assert state.best_score == pytest.approx(valid_score("edm", best_mae, std))
    at_switch = valid_score("edm", torch.tensor([state.history[-1]["valid_mae"][p] for p in EDM_LOWER_BOUND]), std)
    state = train_chunk(state, data, minutes=10, device=CPU, max_steps=40, log=quiet)
    rows = [h for h in state.history if h["criterion"] == "edm"]
    assert len(rows) == 10 and rows[-1]["valid_score"] < at_switch  # the weighted loss still learns
