"""Parsing qm9pack's CSVs (``qm9_part*.csv``) into :class:`~molgen.data.qm9_dataset.QM9Data`.

Called by :func:`molgen.data.qm9.load_qm9` when no valid cache exists; fully vectorised with numpy.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS
from molgen.data.properties import PROPERTIES
from molgen.data.qm9_dataset import QM9Data
from molgen.errors import MolgenError


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
