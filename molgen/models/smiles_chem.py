"""RDKit glue of the ``smiles-ar`` family: training records, scaffolds, generated strings -> molecules.

Everything here talks to RDKit; the model (:mod:`molgen.models.smiles_ar`) only sees token ids
and scaffold tensors. Strings use the explicit-hydrogen vocabulary of
:mod:`molgen.models.smiles_tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from molgen.chem.conformer import embed_conformer
from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.errors import MolgenError
from molgen.models.smiles_tokenizer import Vocabulary, explicit_h_smiles, parse_atoms, tokenize

#: the vocabulary of every smiles-ar model (fewer than 256 tokens: ids fit in bytes, see training_record)
VOCAB = Vocabulary.default()
assert len(VOCAB) < 256


@dataclass
class Scaffold:
    """Heavy atoms of a scaffold / fragment in 3D: ``types [m]``, ``charges [m]``, ``pos [m, 3]`` (Å)."""

    types: Tensor
    charges: Tensor
    pos: Tensor


@lru_cache(maxsize=400_000)
def training_record(smiles: str) -> tuple[bytes, tuple[int, ...], tuple[int, ...]] | None:
    """``(token ids, heavy element sequence, scaffold heavy-atom indices)`` of a source SMILES, or None.

    Token ids use :meth:`Vocabulary.default` (fewer than 256 tokens, kept as ``bytes``: the cache
    holds every training molecule); the scaffold indices are positions among the heavy atoms in
    SMILES order (empty: no ring, no scaffold).
    """
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold
    from rdkit.rdBase import BlockLogs

    text = explicit_h_smiles(smiles)
    if text is None:
        return None
    _block = BlockLogs()  # noqa: F841
    mol = Chem.MolFromSmiles(smiles)
    heavy = tuple(ELEMENT_INDEX.get(a.GetSymbol(), -1) for a in mol.GetAtoms())
    scaf: tuple[int, ...] = ()
    core = MurckoScaffold.GetScaffoldForMol(mol)
    if core.GetNumAtoms():
        scaf = tuple(mol.GetSubstructMatch(core))
    return bytes(VOCAB.encode(text)), heavy, scaf


def scaffold_from_smiles(smiles: str, seed: int = 0) -> Scaffold:
    """A user scaffold / fragment SMILES -> its heavy atoms with ETKDG coordinates.

    Raises:
        MolgenError: unparsable SMILES, elements outside H C N O F, no heavy atom, failed embedding.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    _block = BlockLogs()  # noqa: F841
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MolgenError(f"--scaffold '{smiles}' is not a valid SMILES")
    bad = sorted({a.GetSymbol() for a in mol.GetAtoms()} - set(ELEMENTS))
    if bad:
        raise MolgenError(f"--scaffold '{smiles}' has atoms outside {', '.join(ELEMENTS)}: {', '.join(bad)}")
    mh = Chem.AddHs(mol)
    pos = embed_conformer(mh, seed)
    if pos is None:
        raise MolgenError(f"RDKit could not embed --scaffold '{smiles}' in 3D")
    heavy = [a.GetIdx() for a in mh.GetAtoms() if a.GetSymbol() != "H"]
    if not heavy:
        raise MolgenError(f"--scaffold '{smiles}' has no heavy atom")
    atoms = [mh.GetAtomWithIdx(i) for i in heavy]
    return Scaffold(
        types=torch.tensor([ELEMENT_INDEX[a.GetSymbol()] for a in atoms]),
        charges=torch.tensor([a.GetFormalCharge() for a in atoms]),
        pos=torch.from_numpy(pos[heavy]).float(),
    )


def smiles_to_molecule(smiles: str, seed: int) -> Molecule3D:
    """A generated explicit-H string -> :class:`Molecule3D` (see the module docstring)."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    types, charges = parse_atoms(tokenize(smiles))
    n = len(types)
    invalid = Molecule3D(atom_types=np.asarray(types, dtype=np.int64), positions=np.full((n, 3), np.nan),
                         charges=np.asarray(charges, dtype=np.int64), smiles=smiles)
    _block = BlockLogs()  # noqa: F841
    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.MolFromSmiles(smiles, params) if n else None
    if mol is None or mol.GetNumAtoms() != n:
        return invalid
    kek = Chem.Mol(mol)
    try:
        Chem.Kekulize(kek, clearAromaticFlags=True)
    except Exception:  # noqa: BLE001 — RDKit accepted it, so this is not expected; count it invalid
        return invalid
    bonds = np.zeros((n, n), dtype=np.int64)
    for b in kek.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        order = int(round(b.GetBondTypeAsDouble()))
        if order not in (1, 2, 3):
            return invalid
        bonds[i, j] = bonds[j, i] = order
    pos = embed_conformer(Chem.AddHs(mol), seed)  # implicit H RDKit adds are appended after the n atoms
    return Molecule3D(
        atom_types=np.asarray([ELEMENT_INDEX[a.GetSymbol()] for a in mol.GetAtoms()], dtype=np.int64),
        positions=np.full((n, 3), np.nan) if pos is None else pos[:n],
        charges=np.asarray([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=np.int64),
        bonds=bonds,
        smiles=smiles,
    )


def contains_substructure(mol: Molecule3D, query: Any) -> bool:
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    if mol.bonds is None:
        return False
    _block = BlockLogs()  # noqa: F841
    params = Chem.SmilesParserParams()
    params.removeHs = False
    m = Chem.MolFromSmiles(mol.smiles, params)
    return m is not None and m.HasSubstructMatch(query)
