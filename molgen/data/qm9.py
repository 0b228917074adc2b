"""QM9 from the ``qm9pack`` wheel: parse its CSVs once, cache the tensors, EDM splits, a summary.

The processed dataset is one ``torch.save`` file ``qm9-<key>.pt`` in the cache folder, where
``<key>`` hashes :data:`PROCESSING_VERSION`, this module's and ``properties.py``'s source, the
element vocabulary and the names and sizes of the source CSVs: changing any of them selects a new
cache file, and a cache whose contents do not match its key is rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.data import properties as _properties_module
from molgen.data.properties import PROPERTIES, get_property
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


@dataclass
class QM9Data:
    """QM9 as flat (ragged) tensors; molecule ``i`` is atoms ``ptr[i]:ptr[i+1]``.

    Attributes:
        atom_types: ``[A]`` long, indices into :data:`~molgen.chem.elements.ELEMENTS`.
        positions: ``[A, 3]`` float32 coordinates in Ångström, as in the source file.
        charges: ``[A]`` long formal charges (nonzero only in the few zwitterions).
        ptr: ``[M + 1]`` long offsets, ``ptr[0] == 0`` and ``ptr[-1] == A``.
        properties: ``[M, P]`` float32 graph-level properties in user units (eV, D, ...).
        property_names: the ``P`` names of the columns of ``properties``.
        smiles: ``M`` SMILES strings from the source.
        index: ``[M]`` long QM9 index (the ``gdb_<index>`` id), strictly ascending.
        charge_mismatches: charged SMILES whose heavy atoms did not line up with the geometry
            (their formal charges were left at zero).
    """

    atom_types: torch.Tensor
    positions: torch.Tensor
    charges: torch.Tensor
    ptr: torch.Tensor
    properties: torch.Tensor
    property_names: tuple[str, ...]
    smiles: list[str]
    index: torch.Tensor
    charge_mismatches: int = 0

    @property
    def num_molecules(self) -> int:
        """``M``, the number of molecules."""
        return int(self.ptr.numel() - 1)

    @property
    def n_atoms(self) -> torch.Tensor:
        """``[M]`` long: atoms per molecule (hydrogens included)."""
        return self.ptr[1:] - self.ptr[:-1]

    # Defined after the @property members above: from here on, ``property`` in this class
    # body names this method, not the builtin.
    def property(self, name: str) -> torch.Tensor:
        """``[M]`` float32 values of property ``name`` (user units).

        Raises:
            MolgenError: if the property is unknown or not part of this dataset.
        """
        spec = get_property(name)
        if spec.name not in self.property_names:
            raise MolgenError(
                f"property '{spec.name}' is not in this dataset; it has "
                f"{', '.join(self.property_names)}"
            )
        return self.properties[:, self.property_names.index(spec.name)]

    def molecule(self, i: int) -> Molecule3D:
        """Molecule ``i`` (negative counts from the end) as numpy arrays with its properties."""
        m = self.num_molecules
        if not -m <= i < m:
            raise IndexError(f"molecule {i} out of range for {m} molecules")
        i %= m
        lo, hi = int(self.ptr[i]), int(self.ptr[i + 1])
        values = self.properties[i].tolist()
        return Molecule3D(
            atom_types=self.atom_types[lo:hi].numpy().copy(),
            positions=self.positions[lo:hi].numpy().copy(),
            charges=self.charges[lo:hi].numpy().copy(),
            properties=dict(zip(self.property_names, values)),
        )

    def validate(self) -> None:
        """Check shapes, dtypes and offsets are mutually consistent.

        Raises:
            ValueError: naming the first inconsistency found.
        """
        a = self.atom_types.numel()
        m = self.ptr.numel() - 1
        checks = [
            (self.atom_types.dtype == torch.long and self.atom_types.dim() == 1, "atom_types"),
            (self.charges.dtype == torch.long and tuple(self.charges.shape) == (a,), "charges"),
            (self.positions.dtype == torch.float32 and tuple(self.positions.shape) == (a, 3),
             "positions"),
            (self.ptr.dtype == torch.long and self.ptr.dim() == 1 and m >= 0, "ptr shape"),
            (m >= 0 and int(self.ptr[0]) == 0 and int(self.ptr[-1]) == a, "ptr ends"),
            (bool((self.ptr[1:] >= self.ptr[:-1]).all()), "ptr not monotonic"),
            (tuple(self.properties.shape) == (m, len(self.property_names)), "properties shape"),
            (len(self.smiles) == m, "smiles length"),
            (tuple(self.index.shape) == (m,), "index shape"),
            (bool((self.index[1:] > self.index[:-1]).all()), "index not ascending"),
        ]
        if a:
            lo, hi = int(self.atom_types.min()), int(self.atom_types.max())
            checks.append((0 <= lo and hi < len(ELEMENTS), "atom_types out of range"))
        for ok, what in checks:
            if not ok:
                raise ValueError(f"inconsistent QM9 tensors: {what}")


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
    for module_file in (__file__, _properties_module.__file__):
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


# --------------------------------------------------------------------------- parsing


def parse_qm9_csv(files: list[Path]) -> QM9Data:
    """Parse qm9pack-format CSVs into :class:`QM9Data` (no caching).

    Everything is collected as Python strings per column first, then converted with a few
    vectorised numpy calls, so the full 225 MB parse takes seconds, not minutes.

    Raises:
        MolgenError: on missing columns, unknown elements, unparsable numbers, atom counts that
            disagree between columns, or duplicate indices.
    """
    csv.field_size_limit(sys.maxsize)
    prop_names = tuple(PROPERTIES)
    index_s: list[str] = []
    smiles: list[str] = []
    n_atoms_s: list[str] = []
    elements_s: list[str] = []
    xyz_s: list[str] = []
    props_s: list[list[str]] = []
    for f in files:
        with open(f, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None) or []
            needed = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"]
            needed += [PROPERTIES[p].column for p in prop_names]
            missing = [c for c in needed if c not in header]
            if missing:
                raise MolgenError(f"{f} is not a qm9pack CSV: missing columns {', '.join(missing)}")
            ci, cs, cn, ce, cx = (header.index(c) for c in needed[:5])
            cp = [header.index(PROPERTIES[p].column) for p in prop_names]
            for row in reader:
                index_s.append(row[ci])
                smiles.append(row[cs])
                n_atoms_s.append(row[cn])
                elements_s.append(row[ce])
                xyz_s.append(row[cx])
                props_s.append([row[c] for c in cp])
    where = ", ".join(f.name for f in files)
    m = len(index_s)
    try:
        index = np.array(index_s, dtype=np.int64)
        n_atoms = np.array(n_atoms_s, dtype=np.int64)
        raw_props = np.array(props_s, dtype=np.float64).reshape(m, len(prop_names))
    except ValueError as exc:
        raise MolgenError(f"bad number in {where}: {exc}") from None

    atom_types = _parse_elements(elements_s, n_atoms, where)
    positions = _parse_positions(xyz_s, n_atoms, where)
    ptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(n_atoms, out=ptr[1:])

    order = np.argsort(index, kind="stable")
    if not np.array_equal(order, np.arange(m)):
        atom_order = _ragged_gather(ptr, order)
        index, n_atoms, raw_props = index[order], n_atoms[order], raw_props[order]
        smiles = [smiles[i] for i in order]
        atom_types, positions = atom_types[atom_order], positions[atom_order]
        np.cumsum(n_atoms, out=ptr[1:])
    if m > 1 and not (np.diff(index) > 0).all():
        raise MolgenError(f"duplicate QM9 indices in {where}")

    charges, mismatches = _formal_charges(smiles, atom_types, ptr)
    factors = np.array([PROPERTIES[p].factor for p in prop_names])
    return QM9Data(
        atom_types=torch.from_numpy(atom_types.astype(np.int64)),
        positions=torch.from_numpy(positions.astype(np.float32)),
        charges=torch.from_numpy(charges.astype(np.int64)),
        ptr=torch.from_numpy(ptr),
        properties=torch.from_numpy((raw_props * factors).astype(np.float32)),
        property_names=prop_names,
        smiles=smiles,
        index=torch.from_numpy(index),
        charge_mismatches=mismatches,
    )


def _parse_elements(elements_s: list[str], n_atoms: np.ndarray, where: str) -> np.ndarray:
    """``[A]`` int8 element indices from strings like ``"['C','H','H']"``; checks counts."""
    counts = np.fromiter((s.count(",") + 1 for s in elements_s), dtype=np.int64,
                         count=len(elements_s))
    if not np.array_equal(counts, n_atoms):
        bad = int(np.flatnonzero(counts != n_atoms)[0])
        raise MolgenError(f"row {bad + 1} of {where}: Elements disagrees with N_atoms")
    tokens = ",".join(elements_s).translate(_STRIP_ELEMENTS).split(",")
    try:
        return np.array([ELEMENT_INDEX[t] for t in tokens], dtype=np.int8)
    except KeyError as exc:
        raise MolgenError(f"unknown element {exc.args[0]!r} in {where}") from None


_STRIP_ELEMENTS = str.maketrans("", "", "[]'\" ")
_STRIP_BRACKETS = str.maketrans("", "", "[]")


def _parse_positions(xyz_s: list[str], n_atoms: np.ndarray, where: str) -> np.ndarray:
    """``[A, 3]`` float64 coordinates from strings like ``"[[0.,1.2,-3],...]"``; checks counts.

    A text-mode ``np.fromstring`` accepts C float syntax, including ``0.`` which JSON rejects.
    """
    counts = np.fromiter((s.count("[") - 1 for s in xyz_s), dtype=np.int64, count=len(xyz_s))
    if not np.array_equal(counts, n_atoms):
        bad = int(np.flatnonzero(counts != n_atoms)[0])
        raise MolgenError(f"row {bad + 1} of {where}: XYZ_Ang disagrees with N_atoms")
    text = ",".join(xyz_s).translate(_STRIP_BRACKETS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # older numpy only warns
            flat = np.fromstring(text, dtype=np.float64, sep=",") if text else np.zeros(0)
    except (ValueError, DeprecationWarning):
        flat = np.zeros(0)
    total = int(n_atoms.sum())
    if flat.size != 3 * total:
        raise MolgenError(f"unparsable XYZ_Ang coordinates in {where}")
    return flat.reshape(total, 3)


def _ragged_gather(ptr: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``[A]`` atom indices that lay out molecules in ``order`` (``ptr`` is ``[M + 1]``)."""
    counts = ptr[1:][order] - ptr[:-1][order]
    new_starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.repeat(ptr[:-1][order] - new_starts, counts) + np.arange(int(counts.sum()))


def _formal_charges(
    smiles: list[str], atom_types: np.ndarray, ptr: np.ndarray
) -> tuple[np.ndarray, int]:
    """``[A]`` int8 formal charges from the SMILES of the (few) charged molecules.

    The heavy atoms of each geometry are listed in SMILES atom order, so the RDKit atom ``k``
    of a charged SMILES is the ``k``-th non-hydrogen atom of the molecule. Hydrogens get 0.

    Returns:
        The charges and the number of charged SMILES whose heavy-atom sequence did not match
        (or did not parse); those molecules keep all-zero charges.
    """
    from rdkit import Chem

    charges = np.zeros(len(atom_types), dtype=np.int8)
    mismatches = 0
    h = ELEMENT_INDEX["H"]
    for i, smi in enumerate(smiles):
        if "+" not in smi and "-" not in smi:
            continue
        mol = Chem.MolFromSmiles(smi, sanitize=False)  # charges are read, no chemistry needed
        atoms = [] if mol is None else [a for a in mol.GetAtoms() if a.GetSymbol() != "H"]
        lo, hi = int(ptr[i]), int(ptr[i + 1])
        heavy = lo + np.flatnonzero(atom_types[lo:hi] != h)
        if mol is None or [a.GetSymbol() for a in atoms] != [ELEMENTS[t] for t in atom_types[heavy]]:
            mismatches += 1
            continue
        charges[heavy] = [a.GetFormalCharge() for a in atoms]
    return charges, mismatches


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
