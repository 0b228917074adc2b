"""No code runs from a file molgen reads; a tampered or bit-flipped checkpoint is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from molgen.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from molgen.errors import MolgenError
from molgen.safe_load import weights_digest

REPO = Path(__file__).resolve().parent.parent


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _crafted(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "config": {}, "stats": {}, "model": {}, "x": _Payload(marker)}, path)
    return path


def _molgen(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "molgen", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": "", **(env or {})})


def _one_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_crafted_pickle_is_refused_on_every_entry_point(tmp_path, qm9_cache, monkeypatch) -> None:
    from molgen.tracking import Tracker

    marker = tmp_path / "marker"
    monkeypatch.chdir(tmp_path)  # the default MLflow store: ./mlruns.db
    tracker = Tracker(None, "molgen", run_name="evil")  # a run whose local checkpoint is the crafted file
    run = tracker.run_id
    tracker.finish()
    evil = _crafted(tmp_path / "outputs" / run / "last.pt", marker)
    env = {"MOLGEN_CACHE": qm9_cache}
    for args in (["generate", "--checkpoint", str(evil), "-n", "2", "--out", "x.sdf"],
                 ["generate", "--run", run, "-n", "2", "--out", "x.sdf"],
                 ["train", "--resume", str(evil)],
                 ["train", "--resume", run],
                 ["evaluate", "--run", run, "-n", "2"]):
        proc = _molgen(*args, cwd=tmp_path, env=env)
        _one_line(proc, "convert_checkpoint.py")
        assert not marker.exists(), args
    from molgen.oracle import load_oracle

    with pytest.raises(MolgenError, match="could run code"):
        load_oracle(_crafted(tmp_path / "oracle.pt", marker))
    assert not marker.exists()


def _small_checkpoint(path: Path) -> Path:
    model = {"w": torch.full((4096,), 1.2345), "b": torch.arange(3.0)}
    return save_checkpoint(path, config={"model": "diffusion"}, stats={}, model=model, ema=None)


def test_tampered_weights_fail_the_integrity_check(tmp_path) -> None:
    path = _small_checkpoint(tmp_path / "a.pt")
    payload = load_checkpoint(path)  # intact: loads
    assert payload["integrity"]["sha256"] == weights_digest({"model": payload["model"]})
    payload["model"]["w"][7] = 1.2346  # changed weights, stale digest
    torch.save(payload, tmp_path / "b.pt")
    with pytest.raises(MolgenError, match="failed its integrity check"):
        load_checkpoint(tmp_path / "b.pt")


def test_a_flipped_bit_in_the_file_is_refused(tmp_path) -> None:
    path = _small_checkpoint(tmp_path / "a.pt")
    raw = bytearray(path.read_bytes())
    pattern = torch.tensor([1.2345]).numpy().tobytes()
    at = raw.find(pattern * 8)
    assert at > 0
    raw[at + 4 * 100 + 1] ^= 0x01  # one bit of one weight
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(MolgenError, match="integrity check|corrupted"):
        load_checkpoint(tmp_path / "flipped.pt")


def test_random_bytes_are_a_one_line_error(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(MolgenError, match="corrupted or unreadable"):
        load_checkpoint(junk)


def test_converter_makes_a_trusted_file_loadable(tmp_path) -> None:
    import numpy as np

    legacy = tmp_path / "legacy.pt"
    torch.save({"format": FORMAT, "config": {"model": "diffusion"}, "stats": {"mean": np.zeros(2)},
                "model": {"w": torch.ones(2)}}, legacy)
    with pytest.raises(MolgenError, match="convert_checkpoint.py"):
        load_checkpoint(legacy)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"), str(legacy),
                           str(tmp_path / "safe.pt")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    payload = load_checkpoint(tmp_path / "safe.pt")
    assert torch.equal(payload["stats"]["mean"], torch.zeros(2, dtype=torch.float64))
