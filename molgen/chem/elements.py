"""The atom vocabulary of molgen (QM9's elements) and the molecule record every family returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS: tuple[int, ...] = (1, 6, 7, 8, 9)
ELEMENT_INDEX: dict[str, int] = {e: i for i, e in enumerate(ELEMENTS)}


@dataclass
class Molecule3D:
    """One generated or loaded molecule.

    Attributes:
        atom_types: ``[n]`` int indices into :data:`ELEMENTS`.
        positions: ``[n, 3]`` float coordinates in Ångström.
        charges: ``[n]`` int formal charges, or ``None`` (treated as all zero).
        properties: graph-level values in user units (targets, oracle predictions, ...).
        bonds: ``[n, n]`` symmetric bond orders (0..3) when the family generated a graph (``vae``,
            ``smiles-ar``); ``None``: bonds are inferred from the positions by EDM's rule.
        smiles: the string a SMILES model emitted, valid or not (``None`` for other families).

    A molecule whose structure could not be produced (an unparsable SMILES, a failed conformer
    embedding) keeps its atoms with non-finite ``positions``; with no ``bonds`` it counts as
    invalid (reason ``no_structure``), never as a set of isolated atoms.
    """

    atom_types: np.ndarray
    positions: np.ndarray
    charges: np.ndarray | None = None
    properties: dict[str, float] = field(default_factory=dict)
    bonds: np.ndarray | None = None
    smiles: str | None = None

    @property
    def has_coordinates(self) -> bool:
        """Whether ``positions`` are usable 3D coordinates (all finite)."""
        return self.num_atoms > 0 and bool(np.isfinite(np.asarray(self.positions, dtype=float)).all())

    @property
    def num_atoms(self) -> int:
        return int(len(self.atom_types))

    @property
    def symbols(self) -> list[str]:
        return [ELEMENTS[int(t)] for t in self.atom_types]
