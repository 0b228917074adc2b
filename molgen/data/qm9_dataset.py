"""The in-memory QM9 dataset: :class:`QM9Data`, flat (ragged) tensors of atoms, positions, properties.

Built by :func:`molgen.data.qm9_csv.parse_qm9_csv` and cached by :func:`molgen.data.qm9.load_qm9`
(importable from there too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from molgen.chem.elements import ELEMENTS, Molecule3D
from molgen.data.properties import get_property
from molgen.errors import MolgenError


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
