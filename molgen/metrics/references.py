"""The MOSES reference sets, read from the ``molsets`` wheel without importing ``moses``.

``pip install --no-deps molsets`` ships, under ``moses/dataset/data/``:

- ``train.csv.gz`` (1,584,663 SMILES), ``test.csv.gz`` (176,074), ``test_scaffolds.csv.gz``
  (176,225): one ``SMILES`` column (``test_scaffolds`` holds molecules whose Bemis–Murcko
  scaffolds do not occur in train);
- ``test_stats.npz`` / ``test_scaffolds_stats.npz``: the statistics MOSES precomputed for its
  published tables (``moses.metrics.compute_intermediate_statistics``): ChemNet ``mu``/``sigma``
  (``fcd_torch``), Morgan fingerprints, BRICS fragment and scaffold counters, logP/SA/QED/weight
  values;

and, under ``moses/metrics/``, the structural-alert SMARTS used by the ``Filters`` metric
(``mcf.csv``, ``wehi_pains.csv``).

``moses/__init__`` is never executed: its pinned dependencies do not install on current Python.

Reference: Polykovskiy et al., "Molecular Sets (MOSES): A Benchmarking Platform for Molecular
Generation Models", Frontiers in Pharmacology 2020.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from molgen.errors import MolgenError

#: The reference splits MOSES ships.
MOSES_SPLITS: tuple[str, ...] = ("train", "test", "test_scaffolds")
#: Splits with precomputed statistics (``<split>_stats.npz``).
MOSES_STATS_SPLITS: tuple[str, ...] = ("test", "test_scaffolds")
_INSTALL_HINT = "pip install --no-deps molsets"


def moses_package_dir() -> Path:
    """The installed ``moses`` package folder (from the ``molsets`` wheel), found without import.

    Raises:
        MolgenError: if molsets is not installed.
    """
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise MolgenError(f"the MOSES reference needs the molsets package: {_INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / "dataset" / "data").is_dir():
        raise MolgenError(
            f"a 'moses' package is installed at {folder} but it has no dataset/data folder "
            f"(not the molsets wheel?): {_INSTALL_HINT}"
        )
    return folder


def moses_data_dir() -> Path:
    """``moses/dataset/data`` inside the molsets wheel."""
    return moses_package_dir() / "dataset" / "data"


def _data_file(name: str) -> Path:
    path = moses_data_dir() / name
    if not path.is_file():
        raise MolgenError(
            f"molsets is installed but {path} is missing: pip install --force-reinstall --no-deps "
            "molsets"
        )
    return path


def moses_split_path(split: str) -> Path:
    """Path of the gzipped CSV of one split (``train``, ``test`` or ``test_scaffolds``)."""
    if split not in MOSES_SPLITS:
        expected = ", ".join(MOSES_SPLITS)
        raise MolgenError(f"unknown MOSES split {split!r}; expected one of {expected}")
    return _data_file(f"{split}.csv.gz")


@lru_cache(maxsize=None)
def load_moses_split(split: str) -> tuple[str, ...]:
    """The SMILES of one MOSES split, in file order (cached in memory per process)."""
    path = moses_split_path(split)
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != ["SMILES"]:
            raise MolgenError(f"{path}: expected a single SMILES column, got {header}")
        return tuple(row[0] for row in reader if row)


def moses_stats_path(split: str) -> Path:
    """Path of MOSES's precomputed statistics for ``test`` or ``test_scaffolds``."""
    if split not in MOSES_STATS_SPLITS:
        raise MolgenError(
            f"MOSES ships statistics only for {', '.join(MOSES_STATS_SPLITS)}, not {split!r}"
        )
    return _data_file(f"{split}_stats.npz")


def load_moses_precomputed(split: str) -> dict[str, dict[str, Any]]:
    """MOSES's precomputed statistics dict for ``test`` or ``test_scaffolds``.

    Keys (as in ``moses.metrics.compute_intermediate_statistics``): ``FCD`` (``mu`` [512] float32,
    ``sigma`` [512, 512] float64), ``SNN`` (``fps`` [N, 1024] uint8 Morgan r=2 bits), ``Frag``
    (``frag`` Counter), ``Scaf`` (``scaf`` Counter) and ``logP``/``SA``/``QED``/``weight``
    (``values`` lists). The file is a pickled object inside an ``.npz`` written by MOSES and
    shipped in the wheel, so it is loaded with ``allow_pickle=True``; it holds ~180 MB of
    fingerprints unpacked, so callers should keep only what they need.
    """
    with np.load(moses_stats_path(split), allow_pickle=True) as data:
        return data["stats"].item()


@dataclass(frozen=True)
class FCDStats:
    """Mean and covariance of ChemNet's penultimate activations over a set of molecules.

    Attributes:
        mu: ``[512]`` float64 mean.
        sigma: ``[512, 512]`` float64 covariance (``np.cov``, ``ddof=1``).
    """

    mu: np.ndarray
    sigma: np.ndarray


@lru_cache(maxsize=None)
def moses_fcd_stats(split: str) -> FCDStats:
    """The ChemNet statistics MOSES precomputed (with ``fcd_torch``) for ``test`` /
    ``test_scaffolds``."""
    fcd = load_moses_precomputed(split)["FCD"]
    return FCDStats(np.asarray(fcd["mu"], np.float64), np.asarray(fcd["sigma"], np.float64))


@dataclass(frozen=True)
class MosesReference:
    """The MOSES reference sets and the FCD statistics MOSES precomputed for the test sets.

    Attributes:
        train: 1,584,663 training SMILES (Novelty is measured against these).
        test: 176,074 test SMILES ("/Test" metrics).
        test_scaffolds: 176,225 scaffold-split test SMILES ("/TestSF" metrics).
        fcd_test: ChemNet statistics of ``test``.
        fcd_test_scaffolds: ChemNet statistics of ``test_scaffolds``.
        data_dir: the folder the files were read from.
    """

    train: tuple[str, ...] = field(repr=False)
    test: tuple[str, ...] = field(repr=False)
    test_scaffolds: tuple[str, ...] = field(repr=False)
    fcd_test: FCDStats = field(repr=False)
    fcd_test_scaffolds: FCDStats = field(repr=False)
    data_dir: Path = Path()


def moses_reference() -> MosesReference:
    """Load the MOSES reference (about 3 s the first time in a process, then cached in memory).

    Raises:
        MolgenError: if molsets is not installed (``pip install --no-deps molsets``) or its data
            files are missing.
    """
    return MosesReference(
        train=load_moses_split("train"),
        test=load_moses_split("test"),
        test_scaffolds=load_moses_split("test_scaffolds"),
        fcd_test=moses_fcd_stats("test"),
        fcd_test_scaffolds=moses_fcd_stats("test_scaffolds"),
        data_dir=moses_data_dir(),
    )


def moses_filter_smarts() -> list[str]:
    """The structural-alert SMARTS of MOSES's ``Filters`` metric: MCF (``mcf.csv``, with header
    ``names,smarts``) followed by PAINS (``wehi_pains.csv``, no header, ``smarts,name`` rows)."""
    folder = moses_package_dir() / "metrics"
    smarts: list[str] = []
    try:
        with open(folder / "mcf.csv", newline="") as fh:
            smarts += [row["smarts"] for row in csv.DictReader(fh)]
        with open(folder / "wehi_pains.csv", newline="") as fh:
            smarts += [row[0].strip() for row in csv.reader(fh) if row]
    except FileNotFoundError as exc:
        raise MolgenError(
            f"molsets is installed but {exc.filename} is missing: pip install --force-reinstall "
            "--no-deps molsets"
        ) from None
    return smarts
