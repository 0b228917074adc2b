"""QM9 from the ``qm9pack`` wheel: parse its CSVs once, cache the tensors, EDM splits, a summary.

The processed dataset is one ``torch.save`` file ``qm9-<key>.pt`` in the cache folder, where
``<key>`` hashes :data:`PROCESSING_VERSION`, the source of this module, of ``qm9_csv.py`` (the
parsing), ``qm9_dataset.py`` (:class:`QM9Data`) and ``properties.py``, the element vocabulary and
the names and sizes of the source CSVs: changing any of them selects a new cache file, and a cache
whose contents do not match its key is rebuilt. :class:`QM9Data` and :func:`parse_qm9_csv` are
importable from here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from molgen.chem.elements import ELEMENTS
from molgen.data import properties as _properties_module
from molgen.data import qm9_csv as _csv_module
from molgen.data import qm9_dataset as _dataset_module
from molgen.data.properties import PROPERTIES
from molgen.data.qm9_csv import parse_qm9_csv
from molgen.data.qm9_dataset import QM9Data
from molgen.errors import MolgenError
from molgen.io_utils import atomic_torch_save

logger = logging.getLogger(__name__)

#: Bump when the processing changes in a way the source hash would not notice.
PROCESSING_VERSION = "1"
#: Molecules in QM9 after removing the 3,054 "uncharacterized" ones (what qm9pack ships).
QM9_NUM_MOLECULES = 130_831
#: The CSV files of the full dataset inside the qm9pack wheel.
QM9_SOURCE_FILES: tuple[str, ...] = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
#: Seed of EDM's permutation of the training set into the halves Da / Db.
EDM_HALF_SEED = 42
_CACHE_FORMAT = "molgen-qm9"


# --------------------------------------------------------------------------- sources and cache


def qm9pack_data_dir() -> Path:
    """The folder of CSVs inside the installed qm9pack wheel (without importing qm9pack).

    Raises:
        MolgenError: if qm9pack is not installed.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise MolgenError("qm9pack is not installed: pip install qm9pack")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _source_files(source_dir: str | os.PathLike | None) -> list[Path]:
    """The CSVs to read: all three of qm9pack's, or every ``qm9_part*.csv`` in ``source_dir``."""
    if source_dir is None:
        folder = qm9pack_data_dir()
        files = [folder / name for name in QM9_SOURCE_FILES]
        if not all(f.is_file() for f in files):
            raise MolgenError(
                f"qm9pack is installed but its data files are missing in {folder}: "
                "pip install --force-reinstall qm9pack"
            )
        return files
    files = sorted(Path(source_dir).glob("qm9_part*.csv"))
    if not files:
        raise MolgenError(f"no qm9_part*.csv files in {source_dir}")
    return files


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir`` if given, else ``$MOLGEN_CACHE``, else ``~/.cache/molgen``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MOLGEN_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "molgen"


def cache_key(files: list[Path]) -> str:
    """Short sha256 of processing version, processing code, vocabulary and the source files."""
    h = hashlib.sha256()
    h.update(f"{_CACHE_FORMAT}:{PROCESSING_VERSION}\n".encode())
    for module_file in (__file__, _csv_module.__file__, _dataset_module.__file__,
                        _properties_module.__file__):
        h.update(Path(module_file).read_bytes())
    h.update(",".join(ELEMENTS).encode())
    for f in files:
        h.update(f"\n{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_qm9(
    cache_dir: str | os.PathLike | None = None,
    *,
    rebuild: bool = False,
    source_dir: str | os.PathLike | None = None,
) -> QM9Data:
    """Load QM9, parsing the CSVs only when no valid cache exists.

    Args:
        cache_dir: where the processed file lives (default ``$MOLGEN_CACHE`` or ``~/.cache/molgen``).
        rebuild: reparse the source even if a valid cache exists.
        source_dir: a folder of ``qm9_part*.csv`` files with qm9pack's columns (e.g. a trimmed
            copy for tests); default is the installed qm9pack wheel, which must hold exactly
            130,831 molecules.

    Returns:
        The dataset, molecules ordered by ascending QM9 index.

    Raises:
        MolgenError: if the source is missing or malformed, or the cache cannot be written.
    """
    files = _source_files(source_dir)
    key = cache_key(files)
    path = resolve_cache_dir(cache_dir) / f"qm9-{key}.pt"
    if not rebuild and path.exists():
        try:
            return _from_payload(torch.load(path, map_location="cpu", weights_only=True), key)
        except Exception as exc:  # unreadable, truncated, or stale: any failure means rebuild
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("QM9 cache %s is unusable (%s); rebuilding it", path, reason)
    start = time.perf_counter()
    data = parse_qm9_csv(files)
    if source_dir is None and data.num_molecules != QM9_NUM_MOLECULES:
        raise MolgenError(
            f"qm9pack holds {data.num_molecules} molecules, expected {QM9_NUM_MOLECULES}: "
            "pip install --force-reinstall qm9pack"
        )
    atomic_torch_save(_to_payload(data, key), path)
    logger.info("processed QM9 (%d molecules) in %.1f s into %s",
                data.num_molecules, time.perf_counter() - start, path)
    return data


def _to_payload(data: QM9Data, key: str) -> dict:
    """A ``weights_only``-loadable dict; small integer tensors are stored as int8."""
    return {
        "format": _CACHE_FORMAT,
        "key": key,
        "atom_types": data.atom_types.to(torch.int8),
        "positions": data.positions,
        "charges": data.charges.to(torch.int8),
        "ptr": data.ptr,
        "properties": data.properties,
        "property_names": list(data.property_names),
        "smiles": "\n".join(data.smiles),  # one string unpickles much faster than 130k
        "index": data.index,
        "charge_mismatches": int(data.charge_mismatches),
    }


def _from_payload(payload: object, key: str) -> QM9Data:
    """Rebuild :class:`QM9Data` from a cache payload, checking it belongs to ``key``.

    Raises:
        ValueError: if the payload is not ours, is stale, or is internally inconsistent.
    """
    if not isinstance(payload, dict) or payload.get("format") != _CACHE_FORMAT:
        raise ValueError("not a molgen QM9 cache")
    if payload.get("key") != key:
        raise ValueError(f"stale key {payload.get('key')!r}, expected {key!r}")
    smiles = payload["smiles"].split("\n") if payload["smiles"] else []
    data = QM9Data(
        atom_types=payload["atom_types"].long(),
        positions=payload["positions"],
        charges=payload["charges"].long(),
        ptr=payload["ptr"],
        properties=payload["properties"],
        property_names=tuple(payload["property_names"]),
        smiles=smiles,
        index=payload["index"],
        charge_mismatches=int(payload["charge_mismatches"]),
    )
    data.validate()
    return data


# --------------------------------------------------------------------------- splits


def edm_splits(num_molecules: int = QM9_NUM_MOLECULES, seed: int = 0) -> dict[str, torch.Tensor]:
    """The EDM / Cormorant QM9 split, as molecule positions (0-based rows of :class:`QM9Data`).

    ``perm = RandomState(seed).permutation(M)``; train = ``perm[:100000]``, valid = the next
    17,748, test = the last 13,083 (``int(0.1 * M)``). For other ``M`` (test subsets) the same
    proportions: train = ``round(M * 100000 / 130831)``, test = ``int(0.1 * M)``.

    ``da`` / ``db`` are EDM's ``qm9_first_half`` / ``qm9_second_half`` (oracle / generator halves
    of the conditional protocol). EDM reorders its training set by QM9 index, then takes the
    halves of ``RandomState(42).permutation(len(train))``; reproduced here exactly.

    Returns:
        ``{"train", "valid", "test", "da", "db"}`` -> 1-D long tensors of row positions.
    """
    if num_molecules < 0:
        raise ValueError("num_molecules must be >= 0")
    n_train = round(num_molecules * 100_000 / QM9_NUM_MOLECULES)
    n_test = int(0.1 * num_molecules)
    n_valid = num_molecules - n_train - n_test
    perm = np.random.RandomState(seed).permutation(num_molecules)
    train = perm[:n_train]
    valid = perm[n_train:n_train + n_valid]
    test = perm[n_train + n_valid:]
    train_by_index = np.sort(train)  # rows are in QM9-index order, as EDM's train file is
    half_perm = np.random.RandomState(EDM_HALF_SEED).permutation(n_train)
    half = n_train // 2
    da = train_by_index[half_perm[:half]]
    db = train_by_index[half_perm[half:]]
    return {k: torch.from_numpy(v.astype(np.int64)) for k, v in
            {"train": train, "valid": valid, "test": test, "da": da, "db": db}.items()}


# --------------------------------------------------------------------------- summary


def format_qm9_summary(data: QM9Data) -> str:
    """Human-readable statistics of the dataset (backs ``molgen data qm9``)."""
    n = data.n_atoms
    m = data.num_molecules
    lines = [f"QM9: {m:,} molecules, {data.atom_types.numel():,} atoms"]
    if m:
        lines.append(f"atoms per molecule: min {int(n.min())}, mean {n.float().mean():.2f}, "
                     f"max {int(n.max())}")
    counts = torch.bincount(data.atom_types, minlength=len(ELEMENTS)).tolist()
    lines.append("elements: " + ", ".join(f"{e} {c:,}" for e, c in zip(ELEMENTS, counts)))
    mol_of_atom = torch.repeat_interleave(torch.arange(m), n)
    charged = torch.zeros(m, dtype=torch.bool)
    charged[mol_of_atom[data.charges != 0]] = True
    lines.append(f"charged molecules (zwitterions): {int(charged.sum()):,}; "
                 f"charged SMILES not matched to the geometry: {data.charge_mismatches}")
    splits = edm_splits(m)
    lines.append("EDM splits: " + ", ".join(f"{k} {v.numel():,}" for k, v in splits.items()))
    lines.append("properties (user units):")
    header = f"  {'name':<6} {'unit':<12} {'mean':>10} {'std':>9} {'min':>10} {'1%':>10} " \
             f"{'99%':>10} {'max':>10}"
    lines.append(header)
    for j, name in enumerate(data.property_names):
        v = data.properties[:, j].double().numpy()
        if v.size == 0:
            continue
        q = np.percentile(v, [0, 1, 99, 100])
        lines.append(f"  {name:<6} {PROPERTIES[name].unit:<12} {v.mean():>10.6g} {v.std():>9.4g} "
                     f"{q[0]:>10.6g} {q[1]:>10.6g} {q[2]:>10.6g} {q[3]:>10.6g}")
    return "\n".join(lines)
