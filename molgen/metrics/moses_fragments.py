"""BRICS fragments, Bemis–Murcko scaffolds and the cosine similarity behind MOSES's Frag / Scaf.

Part of the MOSES metric set (:mod:`molgen.metrics.moses`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from molgen.metrics.moses_validity import MolLike, get_mol


def fragments(mol: Chem.Mol) -> list[str]:
    """BRICS fragments (with dummy atoms) as canonical SMILES, one entry per fragment."""
    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def scaffold(mol: Chem.Mol, min_rings: int = 2) -> str | None:
    """Bemis–Murcko scaffold SMILES, or ``None`` if it has fewer than ``min_rings`` rings."""
    try:
        scaf = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(scaf)
    if not smiles or scaf.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def compute_fragments(mols: Iterable[MolLike]) -> Counter:
    """BRICS fragment counts over valid molecules (MOSES ``compute_fragments``)."""
    counts: Counter = Counter()
    for m in mols:
        mol = get_mol(m)
        if mol is None:
            raise ValueError("invalid molecule passed to compute_fragments")
        counts.update(fragments(mol))
    return counts


def compute_scaffolds(mols: Iterable[MolLike], min_rings: int = 2) -> Counter:
    """Scaffold counts over valid molecules, scaffolds with < ``min_rings`` rings left out
    (MOSES ``compute_scaffolds``)."""
    counts: Counter = Counter()
    for m in mols:
        mol = get_mol(m)
        if mol is None:
            raise ValueError("invalid molecule passed to compute_scaffolds")
        scaf = scaffold(mol, min_rings)
        if scaf is not None:
            counts[scaf] += 1
    return counts


def cos_similarity(ref_counts: Mapping[str, float], gen_counts: Mapping[str, float]) -> float:
    """Cosine similarity of two count vectors given as ``{key: count}`` (missing keys are 0);
    ``nan`` if either is empty (MOSES ``cos_similarity``)."""
    if not ref_counts or not gen_counts:
        return float("nan")
    small, big = sorted((ref_counts, gen_counts), key=len)
    dot = sum(float(v) * float(big.get(k, 0)) for k, v in small.items())
    norm = np.sqrt(sum(float(v) ** 2 for v in ref_counts.values()))
    norm *= np.sqrt(sum(float(v) ** 2 for v in gen_counts.values()))
    return float(dot / norm)
