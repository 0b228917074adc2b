"""SDF and XYZ parsing for :func:`molgen.data.readers.read_molecules` (3D and 2D records)."""

from __future__ import annotations

import math
import re

import numpy as np
from rdkit import Chem

from molgen.chem.build import build_mol, sanitize
from molgen.chem.elements import ATOMIC_NUMBERS, ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.chem.io import parse_comment
from molgen.data.records import MoleculeRecord, total_atoms as _total_atoms

_ATOMIC_NUMBER_TO_INDEX: dict[int, int] = {z: i for i, z in enumerate(ATOMIC_NUMBERS)}
_SUPPORTED_ELEMENTS = ", ".join(ELEMENTS)


# --------------------------------------------------------------------------------------------
# SDF
# --------------------------------------------------------------------------------------------


def _sdf_blocks(text: str) -> list[str]:
    """The records of an SDF file: text between ``$$$$`` lines, blank ones skipped."""
    blocks: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line.strip() == "$$$$":
            if any(s.strip() for s in current):
                blocks.append("\n".join(current) + "\n")
            current = []
        else:
            current.append(line)
    if any(s.strip() for s in current):
        blocks.append("\n".join(current) + "\n")
    return blocks


_DATA_HEADER = re.compile(r">.*?<([^>]+)>")


def _sdf_numeric_fields(block: str) -> dict[str, float]:
    """Numeric data fields (``>  <key>`` then one value line) after ``M  END``."""
    _, sep, tail = block.partition("M  END")
    if not sep:
        return {}
    out: dict[str, float] = {}
    lines = tail.split("\n")
    for k, line in enumerate(lines):
        match = _DATA_HEADER.match(line)
        if match and k + 1 < len(lines):
            try:
                value = float(lines[k + 1].strip())
            except ValueError:
                continue
            if math.isfinite(value):
                out[match.group(1).strip()] = value
    return out


def _no_coordinates(m: Chem.Mol) -> bool:
    """A record of two or more atoms all at the origin: a molecule written without a structure
    (molgen writes a failed conformer embedding so), which says nothing about the file being 2D."""
    if m.GetNumAtoms() < 2 or m.GetNumConformers() == 0:
        return False
    return not np.asarray(m.GetConformer().GetPositions()).any()


def _molecule3d_from_rdkit(m: Chem.Mol, properties: dict[str, float]) -> Molecule3D:
    """The given atoms (hydrogens as in the file), 3D positions and formal charges of ``m``."""
    types = np.array(
        [_ATOMIC_NUMBER_TO_INDEX[a.GetAtomicNum()] for a in m.GetAtoms()], dtype=np.int64
    )
    positions = np.asarray(m.GetConformer().GetPositions(), dtype=np.float64).reshape(-1, 3)
    charges = np.array([a.GetFormalCharge() for a in m.GetAtoms()], dtype=np.int64)
    return Molecule3D(types, positions, charges if charges.any() else None, properties)


def _read_sdf(text: str, max_atoms: int) -> tuple[list[MoleculeRecord], bool]:
    # pass 1: parse every record (RDKit's full treatment first, unsanitized for the rejects)
    parsed: list[tuple[str, str, Chem.Mol | None, Chem.Mol | None]] = []
    for block in _sdf_blocks(text):
        title = block.split("\n", 1)[0].strip()
        try:
            good = Chem.MolFromMolBlock(block, sanitize=True, removeHs=False)
            raw = (
                good
                if good is not None
                else Chem.MolFromMolBlock(block, sanitize=False, removeHs=False)
            )
        except Exception:  # noqa: BLE001 — a record RDKit cannot even read is corrupt
            good = raw = None
        parsed.append((block, title, good, raw))

    readable = [raw for _, _, _, raw in parsed if raw is not None and raw.GetNumAtoms() > 0]
    placed = [m for m in readable if not _no_coordinates(m)]
    is_3d = bool(placed) and all(m.GetNumConformers() > 0 and m.GetConformer().Is3D() for m in placed)

    # pass 2: classify
    records: list[MoleculeRecord] = []
    for i, (block, title, good, raw) in enumerate(parsed):
        record = MoleculeRecord(i, title)
        records.append(record)
        if raw is None:
            record.error = "corrupt_record"
            continue
        if raw.GetNumAtoms() == 0:
            record.error = "empty"
            continue
        if is_3d and any(a.GetAtomicNum() not in _ATOMIC_NUMBER_TO_INDEX for a in raw.GetAtoms()):
            record.error = "unsupported_element"
            continue
        if raw.GetNumAtoms() > max_atoms or (good is not None and _total_atoms(good) > max_atoms):
            record.error = "too_many_atoms"
            continue
        if is_3d:
            record.mol3d = _molecule3d_from_rdkit(raw, _sdf_numeric_fields(block))
            if _no_coordinates(raw):  # counted by the 3D metrics as a molecule without a structure
                record.mol3d.positions = np.full_like(record.mol3d.positions, np.nan)
                record.error = "no_coordinates"
                continue
        if good is None:
            record.error = sanitize(raw)[1] or "other"
        else:
            record.mol = good
    return records, is_3d


# --------------------------------------------------------------------------------------------
# XYZ
# --------------------------------------------------------------------------------------------


def _atom_count(line: str) -> int | None:
    """The atom count of an XYZ block header line, or ``None`` if it is not one."""
    token = line.strip()
    return int(token) if token.isdigit() else None


def _element(token: str) -> tuple[int | None, bool]:
    """``(index into ELEMENTS or None, is a real element)`` for a symbol or atomic number."""
    if token.isdigit():
        z = int(token)
        return _ATOMIC_NUMBER_TO_INDEX.get(z), 1 <= z <= 118
    symbol = token[:1].upper() + token[1:].lower()
    if symbol in ELEMENT_INDEX:
        return ELEMENT_INDEX[symbol], True
    try:
        real = Chem.GetPeriodicTable().GetAtomicNumber(symbol) > 0
    except RuntimeError:  # RDKit raises for an unknown symbol
        real = False
    return None, real


def _xyz_block(
    index: int, comment: str, atom_lines: list[str], max_atoms: int
) -> MoleculeRecord:
    """One record from an XYZ block whose size is known."""
    record = MoleculeRecord(index, comment.strip())
    n = len(atom_lines)
    types = np.empty(n, dtype=np.int64)
    positions = np.empty((n, 3), dtype=np.float64)
    unsupported = False
    for k, line in enumerate(atom_lines):
        fields = line.split()
        if len(fields) < 4:
            record.error = "corrupt_record"
            return record
        element, real = _element(fields[0])
        if element is None and not real:
            record.error = "corrupt_record"
            return record
        try:
            xyz = [float(v) for v in fields[1:4]]
        except ValueError:
            record.error = "corrupt_record"
            return record
        if not all(math.isfinite(v) for v in xyz):
            record.error = "corrupt_record"
            return record
        unsupported |= element is None
        types[k] = -1 if element is None else element
        positions[k] = xyz
    if unsupported:
        record.error = "unsupported_element"
        return record
    if n == 0:
        record.error = "empty"
        return record
    if n > max_atoms:
        record.error = "too_many_atoms"
        return record
    properties, charges = parse_comment(comment, n)
    mol3d = Molecule3D(types, positions, charges, properties)
    try:
        m, reason = sanitize(build_mol(mol3d))
    except Exception:  # noqa: BLE001 — a molecule molgen cannot assemble is invalid, not a crash
        m, reason = None, "other"
    if m is not None and _total_atoms(m) > max_atoms:  # RDKit added implicit hydrogens
        record.error = "too_many_atoms"
        return record
    record.mol3d, record.mol, record.error = mol3d, m, reason
    return record


def _read_xyz(text: str, max_atoms: int) -> list[MoleculeRecord]:
    """Blocks of ``count / comment / atom lines``; a malformed region becomes one corrupt record
    and reading resumes at the next line holding only an atom count."""
    lines = text.split("\n")
    records: list[MoleculeRecord] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        n = _atom_count(lines[i])
        if n is None:  # garbage: skip to the next plausible block start
            records.append(MoleculeRecord(len(records), lines[i].strip(), error="corrupt_record"))
            i += 1
            while i < len(lines) and _atom_count(lines[i]) is None:
                i += 1
            continue
        body = lines[i + 2 : i + 2 + n]
        if i + 1 >= len(lines) or len(body) < n or any(not s.strip() for s in body):
            # truncated or short block: keep what follows it if it starts a new block
            comment = lines[i + 1].strip() if i + 1 < len(lines) else ""
            records.append(MoleculeRecord(len(records), comment, error="corrupt_record"))
            i += 1
            while i < len(lines) and _atom_count(lines[i]) is None:
                i += 1
            continue
        records.append(_xyz_block(len(records), lines[i + 1], body, max_atoms))
        i += 2 + n
    return records
