"""Molecular graphs with explicit hydrogens: SMILES -> canonically ordered graph, graph -> 3D (ETKDG).

For the families that generate a graph rather than coordinates (``vae``; ``smiles-ar`` can use the
conformer half).

- :func:`canonical_graph` reads a SMILES, adds the hydrogens as atoms and kekulizes it, so bond
  orders are 1, 2 or 3 (no aromatic 1.5). Atoms are put in molgen's **canonical order**: heavy
  atoms first, then hydrogens, each group by RDKit's canonical atom ranking
  (``Chem.CanonicalRankAtoms(breakTies=True)`` on the aromatic, explicit-hydrogen molecule). Two
  SMILES of the same molecule give the same atom order; the Kekulé structure is RDKit's choice.
- :func:`embed_graph` gives a decoded graph 3D coordinates with an ETKDG (v3) + MMFF94 conformer
  generator. The graph already has its hydrogens as atoms, so no ``Chem.AddHs`` is called and the
  atom count never changes; an under-bonded heavy atom gets implicit hydrogens from sanitization,
  which are not embedded. A graph that RDKit cannot sanitize or embed keeps its atoms and bonds with
  non-finite positions (see :class:`~molgen.chem.elements.Molecule3D`): the metrics then judge it by
  its bonds. Disconnected fragments are embedded one by one (RDKit centres each at the origin) and
  laid out side by side along x, so that they do not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from molgen.chem.build import build_mol, sanitize
from molgen.chem.conformer import embed_conformer
from molgen.chem.elements import ELEMENT_INDEX, Molecule3D

#: Gap in Å between the bounding boxes of embedded fragments laid out side by side.
FRAGMENT_GAP = 3.0


@dataclass(frozen=True)
class MolGraph:
    """A molecular graph with explicit hydrogens (arrays are read-only: results are cached).

    Attributes:
        atom_types: ``[n]`` int64 indices into :data:`~molgen.chem.elements.ELEMENTS`.
        charges: ``[n]`` int64 formal charges.
        edges: ``[E, 3]`` int64 rows ``(i, j, order)`` with ``i < j`` and order 1, 2 or 3.
    """

    atom_types: np.ndarray
    charges: np.ndarray
    edges: np.ndarray

    @property
    def num_atoms(self) -> int:
        return int(len(self.atom_types))

    @classmethod
    def from_bond_matrix(cls, atom_types: np.ndarray, charges: np.ndarray | None, bonds: np.ndarray) -> "MolGraph":
        """The graph of ``[n, n]`` bond orders, atoms in the given order."""
        atom_types = np.array(atom_types, dtype=np.int64)  # copies: the result is made read-only
        charges = np.zeros_like(atom_types) if charges is None else np.array(charges, dtype=np.int64)
        i, j = np.nonzero(np.triu(np.asarray(bonds), k=1))
        edges = np.stack([i, j, np.asarray(bonds)[i, j]], axis=1).astype(np.int64).reshape(-1, 3)
        return cls(_readonly(atom_types), _readonly(charges), _readonly(edges))

    def bond_matrix(self) -> np.ndarray:
        """``[n, n]`` symmetric bond orders (0: no bond), zero diagonal."""
        n = self.num_atoms
        out = np.zeros((n, n), dtype=np.int64)
        i, j, order = self.edges.T
        out[i, j] = order
        out[j, i] = order
        return out


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=1 << 18)
def canonical_graph(smiles: str) -> MolGraph | None:
    """The explicit-hydrogen, kekulized graph of ``smiles`` in canonical atom order (module docstring).

    Returns ``None`` when RDKit cannot parse or kekulize the SMILES or it holds an element outside
    molgen's vocabulary. Cached (QM9's ~130k molecules fit), since training asks for every
    molecule once per epoch.
    """
    _block = BlockLogs()  # noqa: F841
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    mol = Chem.AddHs(mol)
    if any(a.GetSymbol() not in ELEMENT_INDEX for a in mol.GetAtoms()):
        return None
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=True))
    order = sorted(range(mol.GetNumAtoms()), key=lambda i: (mol.GetAtomWithIdx(i).GetAtomicNum() == 1, ranks[i]))
    mol = Chem.RenumberAtoms(mol, order)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:  # noqa: BLE001 — an unkekulizable SMILES has no integer bond orders
        return None
    types = np.array([ELEMENT_INDEX[a.GetSymbol()] for a in mol.GetAtoms()], dtype=np.int64)
    charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=np.int64)
    edges = [
        (min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
         int(b.GetBondTypeAsDouble()))
        for b in mol.GetBonds()
    ]
    edges_arr = np.array(edges, dtype=np.int64).reshape(-1, 3)
    return MolGraph(_readonly(types), _readonly(charges), _readonly(edges_arr))


def _layout_fragments(pos: np.ndarray, fragments: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Centre each fragment and place them side by side along x, ``FRAGMENT_GAP`` Å apart."""
    out = pos.copy()
    right = None
    for frag in fragments:
        idx = list(frag)
        p = pos[idx] - pos[idx].mean(0)
        if right is not None:
            p[:, 0] += right + FRAGMENT_GAP - p[:, 0].min()
        out[idx] = p
        right = float(p[:, 0].max())
    return out - out.mean(0)


def embed_graph(
    atom_types: np.ndarray, charges: np.ndarray | None, bonds: np.ndarray, seed: int = -1
) -> Molecule3D:
    """A :class:`Molecule3D` with ETKDG coordinates for a graph with explicit hydrogens.

    Args:
        atom_types: ``[n]`` element indices.
        charges: ``[n]`` formal charges or ``None``.
        bonds: ``[n, n]`` symmetric bond orders 0..3.
        seed: ETKDG random seed (``-1``: RDKit draws one).

    Returns:
        The molecule with ``bonds`` set; positions are NaN when RDKit cannot sanitize or embed it.
    """
    atom_types = np.asarray(atom_types, dtype=np.int64)
    charges = None if charges is None else np.asarray(charges, dtype=np.int64)
    bonds = np.asarray(bonds, dtype=np.int64)
    n = len(atom_types)
    out = Molecule3D(atom_types=atom_types, positions=np.full((n, 3), np.nan), charges=charges, bonds=bonds)
    m, _ = sanitize(build_mol(out))
    if m is None:
        return out
    pos = embed_conformer(m, seed, separate_fragments=True)
    if pos is None:
        return out
    out.positions = _layout_fragments(pos, Chem.GetMolFrags(m))
    return out
