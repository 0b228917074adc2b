"""Bond orders from interatomic distances: the EDM rule with its bond-length tables.

Reference: Hoogeboom, Satorras, Vignac, Welling, "Equivariant Diffusion for Molecule Generation in
3D", ICML 2022 (EDM) — the tables and margins of its ``qm9/bond_analyze.py``, restricted to QM9's
elements H, C, N, O, F. The tables are the field's convention for atom/molecule stability and for
building RDKit molecules from generated 3D coordinates, so they are reproduced exactly.

Rule for atoms ``a``, ``b`` at distance ``d`` (in pm)::

    single  if d < single[a][b] + 10
    double  if also d < double[a][b] + 5     (only pairs with a double-bond entry)
    triple  if also d < triple[a][b] + 3     (only pairs with a triple-bond entry)

otherwise no bond. All comparisons are strict.
"""

from __future__ import annotations

import numpy as np

from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS

#: Typical single-bond lengths in pm (EDM ``bonds1``), one entry per unordered pair.
SINGLE_BOND_PM: dict[frozenset[str], int] = {
    frozenset(pair): length
    for pair, length in {
        ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
        ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135,
        ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136,
        ("O", "O"): 148, ("O", "F"): 142,
        ("F", "F"): 142,
    }.items()
}  # fmt: skip

#: Typical double-bond lengths in pm (EDM ``bonds2``); pairs not listed have no double bond.
DOUBLE_BOND_PM: dict[frozenset[str], int] = {
    frozenset(pair): length
    for pair, length in {
        ("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120,
        ("N", "N"): 125, ("N", "O"): 121,
        ("O", "O"): 121,
    }.items()
}  # fmt: skip

#: Typical triple-bond lengths in pm (EDM ``bonds3``); pairs not listed have no triple bond.
TRIPLE_BOND_PM: dict[frozenset[str], int] = {
    frozenset(pair): length
    for pair, length in {
        ("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113,
        ("N", "N"): 110,
    }.items()
}  # fmt: skip

#: Tolerances added to the single / double / triple lengths (pm), EDM ``margin1/2/3``.
MARGINS_PM: tuple[int, int, int] = (10, 5, 3)


def _threshold_table(lengths: dict[frozenset[str], int], margin: int) -> np.ndarray:
    """``[5, 5]`` thresholds in pm (length + margin); 0 where the bond does not exist.

    A zero threshold can never be met (``d < 0`` is false), which is how "pairs without a
    double/triple entry stop there" is expressed without branches.
    """
    table = np.zeros((len(ELEMENTS), len(ELEMENTS)), dtype=np.float64)
    for pair, length in lengths.items():
        a, b = (tuple(pair) * 2)[:2]  # a homonuclear pair is a one-element set
        table[ELEMENT_INDEX[a], ELEMENT_INDEX[b]] = length + margin
        table[ELEMENT_INDEX[b], ELEMENT_INDEX[a]] = length + margin
    table.setflags(write=False)
    return table


#: ``[5, 5]`` pm thresholds indexed by :data:`~molgen.chem.elements.ELEMENTS` indices.
SINGLE_THRESHOLD_PM: np.ndarray = _threshold_table(SINGLE_BOND_PM, MARGINS_PM[0])
DOUBLE_THRESHOLD_PM: np.ndarray = _threshold_table(DOUBLE_BOND_PM, MARGINS_PM[1])
TRIPLE_THRESHOLD_PM: np.ndarray = _threshold_table(TRIPLE_BOND_PM, MARGINS_PM[2])


def bond_order(a: str, b: str, distance_angstrom: float) -> int:
    """EDM bond order (0 = none, 1, 2, 3) of elements ``a`` and ``b`` at a given distance.

    Args:
        a: element symbol, one of :data:`~molgen.chem.elements.ELEMENTS`.
        b: element symbol, one of :data:`~molgen.chem.elements.ELEMENTS`.
        distance_angstrom: interatomic distance in Å.

    Raises:
        KeyError: if an element is not one of H, C, N, O, F.
    """
    for symbol in (a, b):
        if symbol not in ELEMENT_INDEX:
            known = ", ".join(ELEMENTS)
            raise KeyError(f"no bond-length table for element {symbol!r}; known: {known}")
    pair = frozenset((a, b))
    d_pm = 100.0 * float(distance_angstrom)
    if not d_pm < SINGLE_BOND_PM[pair] + MARGINS_PM[0]:
        return 0
    if pair not in DOUBLE_BOND_PM or not d_pm < DOUBLE_BOND_PM[pair] + MARGINS_PM[1]:
        return 1
    if pair not in TRIPLE_BOND_PM or not d_pm < TRIPLE_BOND_PM[pair] + MARGINS_PM[2]:
        return 2
    return 3


def distance_matrix(positions: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances, exactly symmetric.

    Args:
        positions: ``[n, 3]`` coordinates (any float dtype; computed in float64).

    Returns:
        ``[n, n]`` float64 distances, in the units of ``positions``.
    """
    pos = np.asarray(positions, dtype=np.float64)
    diff = pos[:, None, :] - pos[None, :, :]  # [n, n, 3]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


def bond_order_matrix(atom_types: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """EDM bond orders for every pair of atoms of one molecule, vectorized.

    Gives the same order as :func:`bond_order` on every pair (same arithmetic: distance in pm
    compared strictly against table length + margin).

    Args:
        atom_types: ``[n]`` int indices into :data:`~molgen.chem.elements.ELEMENTS`.
        positions: ``[n, 3]`` coordinates in Å.

    Returns:
        ``[n, n]`` int64 matrix of bond orders in 0..3, symmetric, with a zero diagonal.
    """
    types = np.asarray(atom_types, dtype=np.int64).reshape(-1)
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if len(types) != len(pos):
        raise ValueError(f"atom_types has {len(types)} entries but positions has {len(pos)} rows")
    if len(types) and (types.min() < 0 or types.max() >= len(ELEMENTS)):
        raise ValueError(f"atom type index out of range 0..{len(ELEMENTS) - 1}")
    d_pm = 100.0 * distance_matrix(pos)  # [n, n]
    ti, tj = types[:, None], types[None, :]
    single = d_pm < SINGLE_THRESHOLD_PM[ti, tj]
    double = single & (d_pm < DOUBLE_THRESHOLD_PM[ti, tj])
    triple = double & (d_pm < TRIPLE_THRESHOLD_PM[ti, tj])
    order = single.astype(np.int64) + double + triple
    np.fill_diagonal(order, 0)
    return order
