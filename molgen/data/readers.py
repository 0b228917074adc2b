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
  any element (MOSES molecules contain S, Cl, Br). A record of a 3D SDF with every atom at the origin
  (how molgen writes a molecule whose conformer embedding failed) is invalid as ``no_coordinates``;
  its :class:`~molgen.chem.elements.Molecule3D` has NaN positions, so stability counts it unstable,
  and it does not turn the file into a 2D one.

Input that cannot be read at all (missing file, directory, permission denied, empty, binary,
unknown extension, a ``column=`` that does not exist) raises a one-line
:class:`~molgen.errors.MolgenError`. RDKit's stderr messages are silenced while reading. The
parsers live in :mod:`molgen.data.readers_smiles` (tables) and :mod:`molgen.data.readers_3d` (SDF, XYZ).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rdkit import Chem
from rdkit.rdBase import BlockLogs

from molgen.chem.build import largest_fragment
from molgen.data.readers_3d import _read_sdf, _read_xyz
from molgen.data.readers_smiles import _first_field_has_comma, _read_smiles_table
from molgen.data.records import ERROR_REASONS, MoleculeRecord, ReadResult
from molgen.errors import MolgenError

__all__ = ["ERROR_REASONS", "FORMATS", "MoleculeRecord", "ReadResult", "canonical_smiles", "read_molecules"]

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


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _looks_like_smiles(text: str, probe: int = 5) -> bool:
    """Whether the first non-blank lines of ``text`` parse as SMILES (a format hint for a wrong suffix)."""
    from rdkit import Chem

    lines = [line.split()[0] for line in text.splitlines() if line.strip()][:probe]
    return bool(lines) and all(Chem.MolFromSmiles(line) is not None for line in lines)


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
        if records and all(r.error == "corrupt_record" for r in records) and _looks_like_smiles(text):
            raise MolgenError(f"{p} holds no SDF record but its lines look like SMILES: rename it to .smi")
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
