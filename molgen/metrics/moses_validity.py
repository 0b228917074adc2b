"""Parsing SMILES the MOSES way, and the validity, unique@k and novelty metrics.

Part of the MOSES metric set (:mod:`molgen.metrics.moses`): ``get_mol`` is MOSES's
``moses/metrics/utils.py`` ``get_mol``; the metrics follow ``moses/metrics/metrics.py``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Union

from rdkit import Chem, RDLogger

MolLike = Union[str, Chem.Mol]


def get_mol(smiles_or_mol: MolLike) -> Chem.Mol | None:
    """An RDKit molecule from SMILES (``None`` if empty, unparsable or unsanitizable); a
    molecule is returned as is (MOSES ``get_mol``)."""
    if not isinstance(smiles_or_mol, str):
        return smiles_or_mol
    if not smiles_or_mol:
        return None
    mol = Chem.MolFromSmiles(smiles_or_mol)
    if mol is None:
        return None
    try:
        Chem.SanitizeMol(mol)
    except ValueError:
        return None
    return mol


def canonical_smiles(smiles_or_mol: MolLike) -> str | None:
    """RDKit canonical (isomeric) SMILES, or ``None`` for an invalid molecule."""
    mol = get_mol(smiles_or_mol)
    return None if mol is None else Chem.MolToSmiles(mol)


def fraction_valid(smiles: Sequence[MolLike]) -> float:
    """Fraction of inputs that are valid molecules (``nan`` for an empty list)."""
    if not smiles:
        return float("nan")
    with quiet_rdkit():
        return sum(get_mol(s) is not None for s in smiles) / len(smiles)


def remove_invalid(smiles: Iterable[MolLike]) -> list[str]:
    """Canonical SMILES of the valid inputs, in input order (duplicates kept)."""
    with quiet_rdkit():
        return [c for c in map(canonical_smiles, smiles) if c is not None]


def fraction_unique(smiles: Sequence[MolLike], k: int | None = None) -> float:
    """unique@k: distinct canonical SMILES among the first ``k`` inputs / their number.

    MOSES applies it to the canonical SMILES of the valid molecules. With fewer than ``k``
    inputs it warns and uses all of them (as MOSES does).

    Raises:
        ValueError: if an input is not a valid molecule.
    """
    if k is not None:
        if len(smiles) < k:
            warnings.warn(f"can't compute unique@{k}: only {len(smiles)} molecules", stacklevel=2)
        smiles = smiles[:k]
    if not smiles:
        return float("nan")
    canonical = set(map(canonical_smiles, smiles))
    if None in canonical:
        raise ValueError("invalid molecule passed to unique@k")
    return len(canonical) / len(smiles)


def novelty(smiles: Iterable[MolLike], train: Iterable[str] | set[str]) -> float:
    """Distinct valid canonical SMILES not in ``train`` / distinct valid canonical SMILES.

    ``train`` holds reference SMILES as they are (MOSES compares with its canonical training
    SMILES without re-canonicalizing them).
    """
    gen = set(map(canonical_smiles, smiles)) - {None}
    if not gen:
        return float("nan")
    train_set = train if isinstance(train, (set, frozenset)) else set(train)
    return len(gen - train_set) / len(gen)


@contextlib.contextmanager
def quiet_rdkit() -> Iterator[None]:
    """Silence RDKit's parse / sanitize messages inside the block."""
    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")
