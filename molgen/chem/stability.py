"""Atom and molecule stability: the EDM valence check on bonds inferred from 3D coordinates.

Reference: Hoogeboom et al., "Equivariant Diffusion for Molecule Generation in 3D", ICML 2022 (EDM),
``qm9/analyze.py`` (``check_stability``) with the valences of ``qm9/bond_analyze.py``. An atom is
*stable* iff the sum of the orders of its bonds (:func:`~molgen.chem.bonds.bond_order_matrix`)
equals its valence (H 1, C 4, N 3, O 2, F 1); a molecule is stable iff all its atoms are.

Formal charges are ignored by default, which is the published protocol. When charges are passed and
nonzero, the target valence follows the octet rule, as later codebases do: elements with lone
pairs (N, O, F) gain one bond per positive charge and lose one per negative charge (N+ 4, N- 2,
O+ 3, O- 1, F- 0); H and C lose one bond per unit of charge of either sign (C+ 3, C- 3, H+ 0).

The names ``atom_stability`` / ``mol_stability`` always mean this rule on bonds inferred from the
positions, whatever the family; the same check on a graph family's own bonds is reported as
``atom_stability_graph`` / ``mol_stability_graph`` (:func:`molgen.metrics.basic.basic_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from molgen.chem.bonds import bond_order_matrix
from molgen.chem.elements import ELEMENTS, Molecule3D

#: Neutral valences (EDM ``allowed_bonds`` for QM9).
VALENCES: dict[str, int] = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}

_VALENCE_BY_INDEX = np.array([VALENCES[e] for e in ELEMENTS], dtype=np.int64)
# +1: a positive charge adds a bond (lone-pair donors); -1: any charge removes one.
_CHARGE_SIGN_BY_INDEX = np.array(
    [1 if e in ("N", "O", "F") else -1 for e in ELEMENTS], dtype=np.int64
)


def expected_valence(atom_types: np.ndarray, charges: np.ndarray | None = None) -> np.ndarray:
    """Target bond-order sum per atom.

    Args:
        atom_types: ``[n]`` int indices into :data:`~molgen.chem.elements.ELEMENTS`.
        charges: ``[n]`` int formal charges, or ``None`` for EDM's charge-blind valences.

    Returns:
        ``[n]`` int64 valences.
    """
    types = np.asarray(atom_types, dtype=np.int64).reshape(-1)
    valence = _VALENCE_BY_INDEX[types]
    if charges is None:
        return valence
    q = np.asarray(charges, dtype=np.int64).reshape(-1)
    if len(q) != len(types):
        raise ValueError(f"charges has {len(q)} entries but atom_types has {len(types)}")
    sign = _CHARGE_SIGN_BY_INDEX[types]
    return np.where(sign > 0, valence + q, valence - np.abs(q))


def atom_stability_from_bonds(
    atom_types: np.ndarray, bonds: np.ndarray, charges: np.ndarray | None = None
) -> np.ndarray:
    """Per-atom stability given a bond-order matrix.

    Args:
        atom_types: ``[n]`` int element indices.
        bonds: ``[n, n]`` symmetric int bond orders with a zero diagonal.
        charges: ``[n]`` formal charges, or ``None`` (EDM: ignore charges).

    Returns:
        ``[n]`` bool, ``True`` where the bond-order sum equals the (charge-adjusted) valence.
    """
    return np.asarray(bonds).sum(axis=1) == expected_valence(atom_types, charges)


def atom_stability(
    atom_types: np.ndarray, positions: np.ndarray, charges: np.ndarray | None = None
) -> np.ndarray:
    """Per-atom EDM stability of one molecule from its coordinates.

    Args:
        atom_types: ``[n]`` int element indices.
        positions: ``[n, 3]`` coordinates in Å.
        charges: ``[n]`` formal charges, or ``None``. ``None`` or all-zero charges give EDM's
            published rule exactly.

    Returns:
        ``[n]`` bool stability per atom.
    """
    return atom_stability_from_bonds(atom_types, bond_order_matrix(atom_types, positions), charges)


def molecule_stability(
    atom_types: np.ndarray, positions: np.ndarray, charges: np.ndarray | None = None
) -> tuple[int, int, bool]:
    """EDM stability of one molecule.

    Args:
        atom_types: ``[n]`` int element indices.
        positions: ``[n, 3]`` coordinates in Å.
        charges: ``[n]`` formal charges, or ``None`` (EDM: ignore charges).

    Returns:
        ``(n_stable_atoms, n_atoms, molecule_is_stable)``. A molecule without atoms is not stable.
    """
    stable = atom_stability(atom_types, positions, charges)
    n_stable, n = int(stable.sum()), int(len(stable))
    return n_stable, n, bool(n > 0 and n_stable == n)


def stability_counts(mols: Iterable[Molecule3D], use_charges: bool = False) -> dict[str, float]:
    """Atom and molecule stability over a set of molecules.

    EDM's ``analyze_stability_for_molecules``: atom stability is pooled over all atoms. Bonds are
    always inferred from the positions (a molecule's own ``bonds`` are ignored); a molecule without
    usable coordinates has every atom unstable.

    Args:
        mols: molecules; positions in Å.
        use_charges: take each molecule's ``charges`` into account (see module docstring). The
            default ``False`` is the published protocol.

    Returns:
        ``{"atom_stability": stable atoms / all atoms, "mol_stability": stable molecules / all
        molecules}``; both 0.0 for an empty input.
    """
    stable_atoms = n_atoms = stable_mols = n_mols = 0
    for mol in mols:
        charges = mol.charges if use_charges else None
        bonds = bond_order_matrix(mol.atom_types, mol.positions) if mol.has_coordinates else None
        if bonds is None:  # no coordinates: every atom unstable
            k, n, ok = 0, mol.num_atoms, False
        else:
            stable = atom_stability_from_bonds(mol.atom_types, bonds, charges)
            k, n = int(stable.sum()), len(stable)
            ok = bool(n > 0 and k == n)
        stable_atoms += k
        n_atoms += n
        stable_mols += ok
        n_mols += 1
    return {
        "atom_stability": stable_atoms / n_atoms if n_atoms else 0.0,
        "mol_stability": stable_mols / n_mols if n_mols else 0.0,
    }


__all__ = [
    "VALENCES",
    "expected_valence",
    "atom_stability_from_bonds",
    "atom_stability",
    "molecule_stability",
    "stability_counts",
]
