"""SMILES-table parsing for :func:`molgen.data.readers.read_molecules`: ``.smi`` / ``.txt`` / ``.csv``
rows, the SMILES column (``column=``, a SMILES-named header cell, else the first column that mostly
parses) and one :class:`~molgen.data.records.MoleculeRecord` per row with MOSES's validity."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from rdkit import Chem

from molgen.chem.build import sanitize
from molgen.data.records import MoleculeRecord, total_atoms as _total_atoms
from molgen.errors import MolgenError

#: A header cell naming the SMILES column: ``smiles``, ``SMILES``, ``smi``, ``canonical_smiles``,
#: ``smiles_string``, ``Isomeric SMILES``, ...
_SMILES_NAME = re.compile(r"(?:[a-z0-9]+[ _.\-])*(?:smiles?|smi)(?:[ _.\-][a-z0-9]+)*")
#: A header label: a plain word-like cell (no SMILES punctuation such as brackets or bond symbols).
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_ .\-]*")
#: Characters that may appear in a SMILES outside brackets; a label using any other character
#: (``name``, ``ID``, ``score``, ``logP``) cannot be a SMILES.
_SMILES_CHARS = frozenset("BCNOPSFIHclnospbr0123456789%()=#+-.:/\\*@~[]$")
#: Rows sampled to find the SMILES column of a table without a SMILES-named header cell.
_DETECT_ROWS = 200


def _first_field_has_comma(text: str) -> bool:
    """Whether a ``.smi`` / ``.txt`` file is really CSV (SMILES never contain commas)."""
    for line in text.split("\n"):
        fields = line.split()
        if fields:
            return "," in fields[0]
    return False


def _is_smiles_name(cell: str) -> bool:
    return _SMILES_NAME.fullmatch(cell.strip().lower()) is not None


def _is_label(cell: str) -> bool:
    """A word-like cell that cannot be a SMILES (``name``, ``ID``, ``score``)."""
    cell = cell.strip()
    return _LABEL.fullmatch(cell) is not None and any(c not in _SMILES_CHARS for c in cell)


def _parses(cell: str) -> bool:
    return Chem.MolFromSmiles(cell, sanitize=False) is not None


def _table_rows(text: str, delimited: bool) -> list[list[str]]:
    """Non-blank rows, cells stripped. Whitespace-separated unless ``delimited`` (CSV)."""
    if not delimited:
        return [fields for fields in (line.split() for line in text.split("\n")) if fields]
    first = next(line for line in text.split("\n") if line.strip())
    counts = {d: first.count(d) for d in (",", "\t", ";")}
    delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [[c.strip() for c in row] for row in reader]
    except csv.Error as exc:
        raise MolgenError(f"malformed CSV at line {reader.line_num}: {exc}") from None
    return [row for row in rows if any(row)]


def _find_column(header: list[str] | None, data: list[list[str]], path: Path) -> int:
    """Index of the SMILES column: a SMILES-named header cell, else the first that mostly parses."""
    if header is not None:
        named = [i for i, c in enumerate(header) if _is_smiles_name(c)]
        if named:
            exact = [i for i in named if header[i].strip().lower() == "smiles"]
            return (exact or named)[0]
    sample = data[:_DETECT_ROWS]
    width = max((len(r) for r in sample), default=1)
    if width == 1:
        return 0
    for j in range(width):
        cells = [r[j] for r in sample if j < len(r) and r[j]]
        if cells and sum(_parses(c) for c in cells) >= 0.5 * len(cells):
            return j
    names = ", ".join(repr(c) for c in header) if header else f"{width} unnamed columns"
    raise MolgenError(
        f"cannot tell which column of {path} holds SMILES (no header like 'smiles' and no "
        f"column that mostly parses as SMILES); pick one with column= (columns: {names})"
    )


def _pick_column(
    rows: list[list[str]], path: Path, delimited: bool, column: str | None
) -> tuple[int, int, str | None]:
    """``(first data row, SMILES column index, header name or None)``."""
    first = rows[0]
    if column is not None:
        exact = [i for i, c in enumerate(first) if c == column]
        folded = [i for i, c in enumerate(first) if c.casefold() == column.strip().casefold()]
        matches = exact or (folded if len(folded) == 1 else [])
        if matches:
            return 1, matches[0], first[matches[0]]
        if any(_is_smiles_name(c) for c in first) or all(_is_label(c) for c in first if c):
            cols = ", ".join(repr(c) for c in first)
            raise MolgenError(f"column {column!r} not found in {path}; its columns are: {cols}")
        raise MolgenError(
            f"column {column!r} not found in {path}: the file has no header row naming its columns"
        )
    has_header = any(_is_smiles_name(c) for c in first) or (
        delimited and all(_is_label(c) for c in first if c)
    )
    if has_header:
        j = _find_column(first, rows[1:], path)
        return 1, j, (first[j] if j < len(first) else None)
    j = _find_column(None, rows, path) if delimited else 0
    return 0, j, None


def _smiles_record(index: int, smiles: str, max_atoms: int) -> MoleculeRecord:
    """Parse and sanitize one SMILES; the reason when RDKit rejects it.

    Validity is MOSES's (the string parses and ``Chem.SanitizeMol`` accepts it). Parsing without
    sanitization and sanitizing in place skips ``MolFromSmiles``'s stereo perception and hydrogen
    removal, ~30% faster with the same verdict and the same canonical SMILES; stereo is still
    perceived when the SMILES is written.
    """
    if not smiles:
        return MoleculeRecord(index, smiles, error="empty")
    m = Chem.MolFromSmiles(smiles, sanitize=False)
    if m is None:
        return MoleculeRecord(index, smiles, error="parse")
    if m.GetNumAtoms() == 0:
        return MoleculeRecord(index, smiles, error="empty")
    if m.GetNumAtoms() > max_atoms:
        return MoleculeRecord(index, smiles, error="too_many_atoms")
    try:
        Chem.SanitizeMol(m)
    except Exception:  # noqa: BLE001 — classify on a fresh copy (a failed sanitize leaves debris)
        raw = Chem.MolFromSmiles(smiles, sanitize=False)
        return MoleculeRecord(index, smiles, error=sanitize(raw)[1] or "other")
    if _total_atoms(m) > max_atoms:
        return MoleculeRecord(index, smiles, error="too_many_atoms")
    return MoleculeRecord(index, smiles, mol=m)


def _read_smiles_table(
    text: str, path: Path, delimited: bool, column: str | None, max_atoms: int
) -> tuple[list[MoleculeRecord], str | None]:
    rows = _table_rows(text, delimited)
    if not rows:
        raise MolgenError(f"{path} is empty: no molecules")
    start, j, name = _pick_column(rows, path, delimited, column)
    if start >= len(rows):
        raise MolgenError(f"{path} is empty: no molecules (only a header line)")
    records = [
        _smiles_record(i, row[j] if j < len(row) else "", max_atoms)
        for i, row in enumerate(rows[start:])
    ]
    return records, name
