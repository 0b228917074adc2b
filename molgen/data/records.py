"""The records a molecule file is read into: one per molecule, invalid ones included."""

from __future__ import annotations

from dataclasses import dataclass, field

from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

from molgen.chem.elements import Molecule3D

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
    "no_coordinates",  # a record of a 3D file with every atom at the origin (e.g. a failed embedding)
    "other",  # any other RDKit rejection
)


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


def total_atoms(m: Chem.Mol) -> int:
    """Atoms including implicit hydrogens (``m`` must be sanitized)."""
    return int(rdMolDescriptors.CalcNumAtoms(m))
