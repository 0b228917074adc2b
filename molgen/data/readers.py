"""Read any generator's output file into molecules, counting (never dropping) the invalid ones.

:func:`read_molecules` is the input side of ``molgen benchmark FILE``. It reads

- **SMILES tables**: ``.smi`` / ``.txt`` (whitespace-separated ``SMILES [name ...]`` lines, an
  optional header) and ``.csv`` (comma, tab or semicolon separated, with or without a header). The
  SMILES column is ``column=`` when given, else a header cell named like ``smiles`` (``SMILES``,
  ``smi``, ``canonical_smiles``, ...), else the first column whose values mostly parse as SMILES.
  A ``.smi`` / ``.txt`` file whose first field holds commas is read as CSV.
- **SDF** (2D or 3D, V2000 or V3000): bonds, charges and hydrogens exactly as given; records are
  split on ``$$$$`` so one corrupt record costs only itself.
- **XYZ** (multi-molecule, the format of :func:`molgen.chem.io.write_xyz`): bonds are inferred with
  molgen's EDM rule (:func:`molgen.chem.build.build_mol`), properties and charges are read back
  from ``key=value`` comment tokens as :func:`molgen.chem.io.read_xyz` does. Unlike ``read_xyz``,
  a block with an element outside H C N O F or a malformed block becomes an invalid record
  instead of failing the whole file.

Any of them may be gzip-compressed (``.smi.gz``, ``.csv.gz``, ...). Text must be UTF-8 (a BOM is
fine) or UTF-16 with a BOM; CRLF / CR line ends are fine; blank lines are skipped.

Counting rules (a benchmark's validity is ``n_valid / n_total``):

- every non-blank line (SMILES tables; the header excepted) and every record (SDF, XYZ) yields
  exactly one :class:`MoleculeRecord`, in file order; duplicates are kept;
- a record is valid iff RDKit sanitizes it (``error is None`` exactly when ``mol is not None``).
  For SMILES this is MOSES's validity (``Chem.MolFromSmiles`` succeeds);
- otherwise ``error`` is one short category from :data:`ERROR_REASONS`;
- a molecule with more than ``max_atoms`` atoms, hydrogens (implicit ones too) included, is
  invalid as ``too_many_atoms``;
- for 3D inputs (3D SDF, XYZ) each record also carries a :class:`~molgen.chem.elements.Molecule3D`
  (valid or not, so 3D metrics such as stability can see every molecule); an element outside
  H C N O F there makes the record invalid as ``unsupported_element``. SMILES and 2D SDF accept
  any element (MOSES molecules contain S, Cl, Br).

Input that cannot be read at all (missing file, directory, permission denied, empty, binary,
unknown extension, a ``column=`` that does not exist) raises a one-line
:class:`~molgen.errors.MolgenError`. RDKit's stderr messages are silenced while reading.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors
from rdkit.rdBase import BlockLogs

from molgen.chem.build import build_mol, largest_fragment, sanitize
from molgen.chem.elements import ATOMIC_NUMBERS, ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.chem.io import _parse_comment
from molgen.errors import MolgenError

#: Short categories stored in :attr:`MoleculeRecord.error` and counted in
#: :attr:`ReadResult.invalid_reasons`.
ERROR_REASONS: tuple[str, ...] = (
    "parse",  # the SMILES string does not parse
    "valence",  # an atom has more bonds than allowed
    "kekulize",  # an aromatic system RDKit cannot kekulize
    "unsupported_element",  # a 3D molecule with an element outside H C N O F
    "too_many_atoms",  # more than max_atoms atoms, hydrogens included
    "empty",  # no atoms (an empty CSV cell, an SDF record without atoms, an XYZ block of 0 atoms)
    "corrupt_record",  # an SDF / XYZ record that cannot be parsed
    "other",  # any other RDKit rejection
)

#: Format names accepted by ``fmt=`` and stored in :attr:`ReadResult.format`.
FORMATS: tuple[str, ...] = ("smiles", "csv", "sdf", "xyz")

#: File suffixes read by :func:`read_molecules` and the format each one means.
SUFFIX_FORMATS: dict[str, str] = {
    ".smi": "smiles",
    ".txt": "smiles",
    ".csv": "csv",
    ".sdf": "sdf",
    ".xyz": "xyz",
}

_FMT_ALIASES: dict[str, str] = {
    "smiles": "smiles",
    "smi": "smiles",
    "txt": "smiles",
    "csv": "csv",
    "sdf": "sdf",
    "sd": "sdf",
    "xyz": "xyz",
}

_ATOMIC_NUMBER_TO_INDEX: dict[int, int] = {z: i for i, z in enumerate(ATOMIC_NUMBERS)}
_SUPPORTED_ELEMENTS = ", ".join(ELEMENTS)

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


@dataclass
class MoleculeRecord:
    """One molecule of an input file.

    Attributes:
        index: 0-based position of the molecule in the file (header and blank lines not counted).
        source: the raw SMILES string (SMILES tables) or the record's title line (SDF, XYZ).
        mol: the sanitized RDKit molecule, or ``None`` when the record is invalid.
        mol3d: the 3D molecule for 3D inputs (3D SDF, XYZ) made only of H C N O F, valid or not;
            ``None`` for SMILES / 2D inputs and for 3D records that are unreadable, have an
            unsupported element or too many atoms.
        error: ``None`` for a valid molecule, else a category from :data:`ERROR_REASONS`.
    """

    index: int
    source: str
    mol: Chem.Mol | None = None
    mol3d: Molecule3D | None = None
    error: str | None = None

    @property
    def valid(self) -> bool:
        """Whether RDKit sanitized the molecule (``error is None``)."""
        return self.error is None


@dataclass
class ReadResult:
    """Everything :func:`read_molecules` read from one file.

    Attributes:
        records: one record per molecule, in file order, invalid ones included.
        format: ``"smiles"`` (whitespace-separated lines), ``"csv"``, ``"sdf"`` or ``"xyz"``.
        n_total: number of records (the denominator of validity).
        n_valid: number of valid records.
        invalid_reasons: ``{reason: count}`` over the invalid records, most frequent first.
        is_3d: ``True`` for XYZ and for an SDF whose readable records all have 3D coordinates.
        smiles_column: the header name of the column the SMILES were read from; ``None`` for
            files without a header row and for SDF / XYZ.
    """

    records: list[MoleculeRecord]
    format: str
    n_total: int = 0
    n_valid: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    is_3d: bool = False
    smiles_column: str | None = None

    @property
    def validity(self) -> float:
        """``n_valid / n_total`` (0.0 for no records)."""
        return self.n_valid / self.n_total if self.n_total else 0.0


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def read_molecules(
    path: str | os.PathLike,
    *,
    column: str | None = None,
    max_atoms: int = 500,
    fmt: str | None = None,
) -> ReadResult:
    """Read every molecule of a SMILES table, SDF or XYZ file.

    Args:
        path: the file; its suffix (``.smi .txt .csv .sdf .xyz``, optionally followed by ``.gz``)
            picks the format unless ``fmt`` is given.
        column: for SMILES tables, the header name of the SMILES column (exact, or
            case-insensitive when unambiguous). Default: auto-detected (see the module docstring).
        max_atoms: molecules with more atoms than this, hydrogens included, are invalid
            (``too_many_atoms``).
        fmt: force a format: ``"smiles"`` (alias ``"smi"``, ``"txt"``), ``"csv"``, ``"sdf"``,
            ``"xyz"``.

    Returns:
        A :class:`ReadResult` with one record per non-blank line / record.

    Raises:
        MolgenError: if the file is missing, a directory, unreadable, empty, binary, of an
            unknown type, or ``column`` is not one of its columns.
    """
    if isinstance(max_atoms, bool) or not isinstance(max_atoms, int) or max_atoms < 1:
        raise MolgenError(f"max_atoms must be a positive integer, got {max_atoms!r}")
    p = Path(path)
    _check_path(p)
    kind, compressed = _resolve_format(p, fmt)
    if column is not None and kind in ("sdf", "xyz"):
        raise MolgenError(
            f"column={column!r} only applies to SMILES tables (.smi .txt .csv), not to {p}"
        )
    text = _read_text(p, compressed)

    _block = BlockLogs()  # noqa: F841 — silences RDKit's stderr messages while alive
    smiles_column: str | None = None
    is_3d = False
    if kind == "smiles" and _first_field_has_comma(text):
        kind = "csv"
    if kind in ("smiles", "csv"):
        records, smiles_column = _read_smiles_table(text, p, kind == "csv", column, max_atoms)
    elif kind == "sdf":
        records, is_3d = _read_sdf(text, max_atoms)
    else:
        records, is_3d = _read_xyz(text, max_atoms), True
    return _result(records, kind, is_3d, smiles_column)


def canonical_smiles(
    records: Sequence[MoleculeRecord],
    *,
    largest_fragment_only: bool = False,
    isomeric: bool = True,
) -> list[str | None]:
    """Canonical SMILES of each record, ``None`` for invalid ones; hydrogens written implicitly.

    The defaults give MOSES's identity (``Chem.MolToSmiles`` of the whole molecule, stereo kept)
    for uniqueness and novelty. ``largest_fragment_only=True, isomeric=False`` gives molgen's EDM
    identity (:func:`molgen.chem.build.largest_fragment_smiles`).

    Args:
        records: records from :func:`read_molecules`.
        largest_fragment_only: keep only the fragment with the most atoms (first on ties).
        isomeric: keep stereochemistry and isotopes.

    Returns:
        One string (or ``None``) per record, in order.
    """
    _block = BlockLogs()  # noqa: F841
    out: list[str | None] = []
    for record in records:
        m = record.mol
        if m is None:
            out.append(None)
            continue
        if largest_fragment_only:
            m = largest_fragment(m)
        if m.GetNumAtoms() != m.GetNumHeavyAtoms():  # hydrogens as atoms (SDF, XYZ, "[H]")
            try:
                m = Chem.RemoveHs(m, sanitize=False)
            except Exception:  # noqa: BLE001 — keep explicit hydrogens if RDKit refuses
                pass
        try:
            out.append(Chem.MolToSmiles(m, isomericSmiles=isomeric))
        except Exception:  # noqa: BLE001 — an unwritable molecule has no identity
            out.append(None)
    return out


# --------------------------------------------------------------------------------------------
# file access
# --------------------------------------------------------------------------------------------


def _check_path(p: Path) -> None:
    if not p.exists():
        raise MolgenError(f"cannot read molecules: {p} does not exist")
    if p.is_dir():
        raise MolgenError(f"cannot read molecules: {p} is a directory, not a file")


def _resolve_format(p: Path, fmt: str | None) -> tuple[str, bool]:
    """``(format, gzip-compressed)`` from ``fmt`` or the file suffix."""
    suffixes = [s.lower() for s in p.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if fmt is not None:
        kind = _FMT_ALIASES.get(fmt.lower().lstrip("."))
        if kind is None:
            raise MolgenError(
                f"unknown molecule format {fmt!r}; use one of {', '.join(FORMATS)}"
            )
        return kind, compressed
    suffix = suffixes[-2] if compressed and len(suffixes) > 1 else p.suffix.lower()
    if compressed and len(suffixes) < 2:
        suffix = ""
    if suffix not in SUFFIX_FORMATS:
        shown = "".join(suffixes[-2:] if compressed else suffixes[-1:]) or "(none)"
        raise MolgenError(
            f"cannot read molecules from {p}: unknown file type {shown!r}; "
            f"use one of {' '.join(SUFFIX_FORMATS)} (optionally .gz)"
        )
    return SUFFIX_FORMATS[suffix], compressed


def _read_text(p: Path, compressed: bool) -> str:
    """The file's text; every way of failing is a one-line MolgenError."""
    try:
        data = p.read_bytes()
    except PermissionError:
        raise MolgenError(f"cannot read {p}: permission denied") from None
    except OSError as exc:
        raise MolgenError(f"cannot read {p}: {exc.strerror or exc}") from None
    if compressed:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            raise MolgenError(f"cannot read {p}: not a valid gzip file") from None
    if not data.strip():
        raise MolgenError(f"{p} is empty: no molecules")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM (e.g. Windows "Unicode")
        encoding = "utf-16"
    elif b"\x00" in data:
        raise MolgenError(f"{p} looks like a binary file (it contains NUL bytes), not molecules")
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise MolgenError(
            f"{p} is not UTF-8 text (undecodable byte at offset {exc.start}); "
            "is it a binary or compressed file?"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise MolgenError(f"{p} is empty: no molecules")
    return text


def _result(
    records: list[MoleculeRecord], kind: str, is_3d: bool, smiles_column: str | None
) -> ReadResult:
    reasons = Counter(r.error for r in records if r.error is not None)
    return ReadResult(
        records=records,
        format=kind,
        n_total=len(records),
        n_valid=sum(r.error is None for r in records),
        invalid_reasons=dict(reasons.most_common()),
        is_3d=is_3d,
        smiles_column=smiles_column,
    )


def _total_atoms(m: Chem.Mol) -> int:
    """Atoms including implicit hydrogens (``m`` must be sanitized)."""
    return int(rdMolDescriptors.CalcNumAtoms(m))


# --------------------------------------------------------------------------------------------
# SMILES tables
# --------------------------------------------------------------------------------------------


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
    is_3d = bool(readable) and all(
        m.GetNumConformers() > 0 and m.GetConformer().Is3D() for m in readable
    )

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
    properties, charges = _parse_comment(comment, n)
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
