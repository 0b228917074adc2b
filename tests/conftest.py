"""Shared pytest fixtures. Other test modules may append fixtures here."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def qm9(tmp_path_factory: pytest.TempPathFactory):
    """The full QM9 dataset, loaded once per session.

    Uses the cache in ``$MOLGEN_CACHE`` if set (fast in CI with a persisted cache), else builds
    it in a session temp folder (~10 s on 2 cores).
    """
    from molgen.data.qm9 import load_qm9

    cache = os.environ.get("MOLGEN_CACHE") or tmp_path_factory.mktemp("molgen_cache")
    return load_qm9(cache)


@pytest.fixture(scope="session")
def qm9_small_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``qm9_part1.csv``: header + the first 200 rows of qm9pack's part 1.

    Pass it as ``load_qm9(cache_dir, source_dir=...)`` for fast tests that need real QM9 rows.
    """
    from molgen.data.qm9 import qm9pack_data_dir

    csv.field_size_limit(sys.maxsize)
    folder = tmp_path_factory.mktemp("qm9_small_source")
    with open(qm9pack_data_dir() / "qm9_part1.csv", newline="") as src, \
            open(folder / "qm9_part1.csv", "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        for i, row in enumerate(reader):
            if i > 200:
                break
            writer.writerow(row)
    return folder


# Tests run many small torch workloads, sometimes beside a server or a second DDP process on a
# 2-core machine: one intra-op thread avoids OpenMP oversubscription (which slows them ~40x).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def qm9_cache(qm9, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the processed QM9 cache built (or found) by the ``qm9`` fixture."""
    from molgen.data.qm9 import resolve_cache_dir

    cache = os.environ.get("MOLGEN_CACHE")
    if cache:
        return str(resolve_cache_dir(cache))
    # the qm9 fixture built its cache in the first temp folder it made
    roots = sorted(Path(tmp_path_factory.getbasetemp()).glob("molgen_cache*"))
    return str(roots[0])


@pytest.fixture(scope="session")
def tiny_oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init property oracle file (the shipped weights are not needed for wiring tests)."""
    import torch

    from molgen.config import BackboneConfig
    from molgen.oracle import ORACLE_PROPERTIES, PropertyOracle

    torch.manual_seed(0)
    bcfg = BackboneConfig(num_layers=1, scalar_dim=16, vector_dim=4, edge_dim=8, graph_dim=16, cond_dim=8, num_rbf=8)
    oracle = PropertyOracle(bcfg, ORACLE_PROPERTIES, [0.0] * 6, [1.0] * 6)
    return oracle.save(tmp_path_factory.mktemp("oracle") / "o.pt")
