"""A real, non-editable install: build the wheel, install it into a fresh virtualenv without the
checkout on the path, and run the main commands from another directory (configs and pretrained
models must come from the wheel)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _source_copy(dst: Path) -> Path:
    """The checkout's tracked and unignored files (no virtualenvs, caches or build folders)."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in filter(None, listed.stdout.split("\0")):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


@pytest.mark.slow
def test_wheel_install_runs_train_and_generate(tmp_path, qm9_cache) -> None:
    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                 str(src)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = wheels.glob("molgen-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path).returncode == 0
    py = venv / "bin" / "python"
    # pip of the fresh environment, which sees nothing of this one yet (so it uninstalls nothing here)
    proc = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "-q", str(wheel)],
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # then the dependencies (torch, rdkit, mlflow, ...) from this environment's site-packages as a plain
    # path entry: its .pth files (molgen's editable hook among them) are not processed
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path)
    Path(purelib.stdout.strip(), "zz_deps.pth").write_text("\n".join(deps) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOLGEN_CONFIGS")}
    env.update(MOLGEN_CACHE=qm9_cache, MLFLOW_TRACKING_URI="", PYTHONNOUSERSITE="1")
    where = _run([str(py), "-c", "import molgen, molgen.config as c; print(molgen.__file__); print(c.configs_dir())"],
                 cwd=work, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    module, configs = where.stdout.split()
    assert str(venv) in module and str(REPO) not in module, where.stdout  # the installed copy, not the checkout
    assert Path(configs, "diffusion.yaml").is_file() and Path(configs, "presets", "tiny.yaml").is_file()
    molgen = [str(py), "-m", "molgen"]
    proc = _run([*molgen, "train", "--model", "diffusion", "--preset", "tiny", "--steps", "2"], cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run([*molgen, "generate", "--pretrained", "smiles-ar-gap", "-n", "4", "--out", "x.xyz"], cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "x.xyz").is_file()
