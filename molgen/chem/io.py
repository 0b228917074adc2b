"""Molecule files: write 3D molecules as SDF, XYZ or SMILES; read multi-molecule XYZ.

Every writer goes through :func:`molgen.io_utils.atomic_open`: a reader never sees a half-written
file, and an unwritable destination is a one-line :class:`~molgen.errors.MolgenError`.

Conventions (shared by all writers, so a file lines up with the list it was written from):

- **SDF**: one record per molecule, in order, *including invalid ones*. Coordinates are the given
  3D positions; bonds are the EDM bonds (:func:`~molgen.chem.bonds.bond_order_matrix`), written as
  inferred (not kekulized, not sanitized); formal charges as ``M  CHG``. The title line is
  ``mol_<index>``. Data fields: each entry of ``mol.properties``, then ``SMILES`` (canonical,
  largest fragment, see :mod:`molgen.chem.build`) when the molecule is valid, or
  ``INVALID_REASON`` (``valence``, ``kekulize``, ...) when it is not.
- **XYZ**: the usual blocks (atom count, comment, ``symbol x y z`` lines). The comment holds
  whitespace-separated ``key=value`` tokens: ``smiles=<SMILES or INVALID>``, then the properties,
  then ``charges=q1,q2,...`` if any formal charge is nonzero. :func:`read_xyz` reads properties and
  charges back from such comments and ignores any other comment text.
- **SMILES** (``.smi``): one line per molecule, no header; an invalid molecule is written as the
  placeholder :data:`INVALID_SMILES` (``INVALID``), which no SMILES parser accepts, so line ``i``
  is molecule ``i`` and a tool that re-parses the file counts the same validity.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from molgen.chem.build import build_mol, largest_fragment_smiles, sanitize
from molgen.chem.elements import ATOMIC_NUMBERS, ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.errors import MolgenError
from molgen.io_utils import atomic_open

#: Written in place of the SMILES of a molecule that fails sanitization.
INVALID_SMILES = "INVALID"

_NUMBER_TO_INDEX = {z: i for i, z in enumerate(ATOMIC_NUMBERS)}


def _format_value(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value).replace("\n", " ")


def _smiles_or_reason(mol: Molecule3D, m: Chem.Mol | None = None) -> tuple[str | None, str | None]:
    sanitized, reason = sanitize(build_mol(mol) if m is None else m)
    return (None, reason) if sanitized is None else (largest_fragment_smiles(sanitized), None)


def _write_text(path: str | os.PathLike, write: Callable[[object], None]) -> None:
    """Run ``write(fh)`` on an atomic text handle; OS failures become a one-line MolgenError."""
    try:
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
            write(fh)
    except OSError as exc:  # e.g. the destination is an existing directory
        raise MolgenError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_sdf(mols: Sequence[Molecule3D], path: str | os.PathLike) -> None:
    """Write molecules as a 3D SDF file, one record each, invalid molecules included.

    Args:
        mols: molecules; positions in Å, optional formal charges and properties.
        path: destination ``.sdf`` file (parent folders are created).

    Raises:
        MolgenError: if ``path`` cannot be written.
    """

    def write(fh) -> None:
        for i, mol in enumerate(mols):
            m = build_mol(mol)
            smiles, reason = _smiles_or_reason(mol, m)
            m.SetProp("_Name", f"mol_{i}")
            fh.write(Chem.MolToMolBlock(m, kekulize=False))
            fields = {str(k): _format_value(v) for k, v in mol.properties.items()}
            if smiles is not None:
                fields["SMILES"] = smiles
            else:
                fields["INVALID_REASON"] = str(reason)
            for key, value in fields.items():
                fh.write(f">  <{key}>\n{value}\n\n")
            fh.write("$$$$\n")

    _write_text(path, write)


def write_xyz(mols: Sequence[Molecule3D], path: str | os.PathLike) -> None:
    """Write molecules as one multi-molecule XYZ file.

    Args:
        mols: molecules; positions in Å.
        path: destination ``.xyz`` file (parent folders are created).

    Raises:
        MolgenError: if ``path`` cannot be written.
    """

    def write(fh) -> None:
        for mol in mols:
            smiles, _ = _smiles_or_reason(mol)
            tokens = [f"smiles={smiles if smiles is not None else INVALID_SMILES}"]
            tokens += [
                f"{str(k).replace(' ', '_')}={_format_value(v).replace(' ', '_')}"
                for k, v in mol.properties.items()
            ]
            if mol.charges is not None and np.any(np.asarray(mol.charges) != 0):
                tokens.append("charges=" + ",".join(str(int(q)) for q in mol.charges))
            pos = np.asarray(mol.positions, dtype=np.float64).reshape(-1, 3)
            fh.write(f"{mol.num_atoms}\n{' '.join(tokens)}\n")
            for symbol, (x, y, z) in zip(mol.symbols, pos.tolist(), strict=True):
                fh.write(f"{symbol:<2s} {x:15.8f} {y:15.8f} {z:15.8f}\n")

    _write_text(path, write)


def write_smiles(mols: Sequence[Molecule3D], path: str | os.PathLike) -> None:
    """Write one canonical largest-fragment SMILES per line, :data:`INVALID_SMILES` if invalid.

    Args:
        mols: molecules; bonds are inferred from positions (Å).
        path: destination ``.smi`` file (parent folders are created).

    Raises:
        MolgenError: if ``path`` cannot be written.
    """

    def write(fh) -> None:
        for mol in mols:
            smiles, _ = _smiles_or_reason(mol)
            fh.write(f"{smiles if smiles is not None else INVALID_SMILES}\n")

    _write_text(path, write)


def write_csv(mols: Sequence[Molecule3D], path: str | os.PathLike) -> None:
    """Write a table: ``index, smiles, invalid_reason, num_atoms`` and every property as a column.

    Args:
        mols: molecules; their ``properties`` (targets, oracle predictions, errors) become columns,
            empty where a molecule lacks one.
        path: destination ``.csv`` file (parent folders are created).

    Raises:
        MolgenError: if ``path`` cannot be written.
    """
    import csv

    keys: list[str] = []
    for mol in mols:
        keys.extend(k for k in mol.properties if k not in keys)

    def write(fh) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["index", "smiles", "invalid_reason", "num_atoms", *keys])
        for i, mol in enumerate(mols):
            smiles, reason = _smiles_or_reason(mol)
            values = [_format_value(mol.properties[k]) if k in mol.properties else "" for k in keys]
            writer.writerow([i, smiles or "", reason or "", mol.num_atoms, *values])

    _write_text(path, write)


_WRITERS: dict[str, Callable[[Sequence[Molecule3D], str | os.PathLike], None]] = {
    ".sdf": write_sdf,
    ".xyz": write_xyz,
    ".smi": write_smiles,
    ".csv": write_csv,
}


def write_molecules(mols: Sequence[Molecule3D], path: str | os.PathLike) -> None:
    """Write molecules in the format given by the file suffix (``.sdf``, ``.xyz``, ``.smi`` or ``.csv``).

    Args:
        mols: molecules to write.
        path: destination file.

    Raises:
        MolgenError: for an unsupported suffix or an unwritable path.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _WRITERS:
        raise MolgenError(
            f"cannot write molecules to {path}: unsupported file type {suffix or '(none)'!r}; "
            f"use one of {', '.join(_WRITERS)}"
        )
    _WRITERS[suffix](mols, path)


def parse_comment(comment: str, n_atoms: int) -> tuple[dict[str, float], np.ndarray | None]:
    """Properties and charges from the ``key=value`` tokens of an XYZ comment line; anything else in
    the comment is ignored."""
    properties: dict[str, float] = {}
    charges = None
    for token in comment.split():
        key, sep, value = token.partition("=")
        if not sep or not key or key == "smiles":
            continue
        if key == "charges":
            try:
                q = np.array([int(v) for v in value.split(",")], dtype=np.int64)
            except ValueError:
                continue
            if len(q) == n_atoms:
                charges = q
            continue
        try:
            properties[key] = float(value)
        except ValueError:
            continue
    return properties, charges


def _element_index(token: str) -> int | None:
    if token.isdigit():
        return _NUMBER_TO_INDEX.get(int(token))
    return ELEMENT_INDEX.get(token[:1].upper() + token[1:].lower())


def read_xyz(path: str | os.PathLike) -> list[Molecule3D]:
    """Read a (multi-molecule) XYZ file.

    Blank lines between blocks are allowed; atom lines may carry extra columns after ``x y z``
    (extended XYZ), which are ignored. Elements may be given as symbols (any case) or atomic
    numbers and must be one of :data:`~molgen.chem.elements.ELEMENTS`.

    Args:
        path: the file.

    Returns:
        The molecules in file order, positions in Å (float64), properties and charges read from
        ``key=value`` comment tokens as written by :func:`write_xyz`.

    Raises:
        MolgenError: if the file cannot be read or a block is malformed (the message names
            the line).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MolgenError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None

    def fail(lineno: int, what: str) -> MolgenError:
        return MolgenError(f"{path}:{lineno}: malformed XYZ: {what}")

    mols: list[Molecule3D] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        header = lines[i].strip()
        try:
            n = int(header)
        except ValueError:
            raise fail(i + 1, f"expected an atom count, got {header[:40]!r}") from None
        if n < 0:
            raise fail(i + 1, f"negative atom count {n}")
        if i + 2 + n > len(lines):  # count line, comment line, n atom lines
            raise fail(len(lines), f"block at line {i + 1} declares {n} atoms but the file ends")
        comment = lines[i + 1]
        types = np.empty(n, dtype=np.int64)
        pos = np.empty((n, 3), dtype=np.float64)
        for k in range(n):
            lineno = i + 3 + k
            fields = lines[lineno - 1].split()
            if len(fields) < 4:
                raise fail(lineno, f"expected 'element x y z', got {lines[lineno - 1][:60]!r}")
            index = _element_index(fields[0])
            if index is None:
                raise fail(lineno, f"unknown element {fields[0]!r}; known: {', '.join(ELEMENTS)}")
            try:
                pos[k] = [float(v) for v in fields[1:4]]
            except ValueError:
                raise fail(lineno, f"bad coordinates {' '.join(fields[1:4])!r}") from None
            types[k] = index
        properties, charges = parse_comment(comment, n)
        mols.append(Molecule3D(types, pos, charges, properties))
        i += 2 + n
    return mols
