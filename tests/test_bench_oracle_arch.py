"""scripts/bench_oracle_arch.py: contender parsing, the budget-fraction and common-step scores, and a
tiny end-to-end run on real QM9 rows."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from molgen.errors import MolgenError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_oracle_arch", ROOT / "scripts" / "bench_oracle_arch.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_parse_contender() -> None:
    assert bench.parse_contender("6x64x16") == (6, 64, 16)
    for bad in ("6x64", "0x64x16", "axbxc", "6*64*16"):
        with pytest.raises(MolgenError, match="LAYERSxSCALARSxVECTORS"):
            bench.parse_contender(bad)


def _history(rows):
    return [{"step": s, "hours": h, "valid_score": v} for s, h, v in rows]


def test_scores_are_the_best_so_far_by_time_and_by_step() -> None:
    hist = _history([(100, 0.1, 0.9), (200, 0.2, 0.5), (300, 0.3, 0.7), (400, 0.4, 0.4)])
    assert bench.best_until(hist, hours=0.05) is None
    assert bench.best_until(hist, hours=0.1) == 0.9
    assert bench.best_until(hist, hours=0.35) == 0.5  # the best so far, not the last row
    assert bench.best_until(hist, step=399) == 0.5 and bench.best_until(hist, step=400) == 0.4
    db = {p: 0.0 for p in ("alpha", "gap", "homo", "lumo", "mu", "Cv")}
    fast = {"name": "1x8x2", "params": 10, "steps": 400, "history": hist, "db_mae": db}
    slow = {"name": "2x8x2", "params": 20, "steps": 230,  # its last validation at step 200
            "history": _history([(100, 0.2, 0.8), (200, 0.4, 0.45)]), "db_mae": {**db, "gap": 0.1}}
    table = bench.summarize([fast, slow], minutes=24.0).splitlines()  # budget 0.4 h: fractions at 0.1 / 0.2 / 0.4 h
    assert "score at step 200" in table[0]
    assert table[2].split(" | ")[1:8] == ["10", "400", "16.7", "0.900", "0.500", "0.400", "0.500"]
    assert table[3].split(" | ")[1:8] == ["20", "230", "9.6", "—", "0.800", "0.450", "0.450"]
    assert table[3].split(" | ")[9] == "100"  # gap in meV


def test_script_runs_contenders_on_the_same_data(tmp_path, qm9_cache) -> None:
    out = tmp_path / "arch.md"
    args = ["--minutes", "10", "--max-steps", "4", "--contender", "1x8x2", "--contender", "2x8x2", "--max-train", "48",
            "--valid-n", "16", "--val-every", "2", "--batch-size", "16", "--db-molecules", "24", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_oracle_arch.py"), *args], cwd=ROOT,
                          env={**os.environ, "MOLGEN_CACHE": qm9_cache}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["1x8x2", "2x8x2"] and runs[0]["params"] < runs[1]["params"]
    assert all(r["steps"] == 4 and [h["step"] for h in r["history"]] == [2, 4] for r in runs)
    assert "| 1x8x2 |" in out.read_text() and "first 24 Db molecules" in out.read_text()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_oracle_arch.py"), "--contender", "4x64"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
