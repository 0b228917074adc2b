"""3D coordinates for a molecular graph: RDKit ETKDG (v3) followed by an MMFF94 relaxation.

The families that generate graphs (``vae``, ``smiles-ar``) and user scaffolds get their geometry
here, so every graph-to-3D step in molgen is one function. ETKDG (Riniker & Landrum, JCIM 2015)
gives a conformer from distance geometry with torsion preferences; relaxing it with the MMFF94
force field (Halgren 1996; UFF where MMFF has no parameters) brings bond lengths close to the
B3LYP geometries of QM9. That matters downstream: EDM's stability rules read bond orders from
distances, and the oracle was trained on DFT geometries (its gap MAE on 400 ``Db`` molecules,
``python scripts/oracle_geometries.py``: DFT 383 meV, ETKDG 415 meV, ETKDG+MMFF 381 meV).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def embed_conformer(mol: Any, seed: int = -1, *, relax: bool = True, separate_fragments: bool = False,
                    max_iters: int = 500) -> np.ndarray | None:
    """Coordinates ``[n, 3]`` (Å) for the atoms of ``mol`` as given (add hydrogens before), or ``None``.

    Args:
        mol: an RDKit ``Mol``; a conformer is added to it.
        seed: ETKDG random seed (``-1``: RDKit draws one).
        relax: optimize the conformer with MMFF94 (UFF if MMFF lacks parameters; kept unrelaxed if
            neither applies).
        separate_fragments: embed disconnected fragments one by one (ETKDG's
            ``embedFragmentsSeparately``).
        max_iters: force-field iterations.

    Returns:
        ``None`` when RDKit rejects the graph or embedding fails twice (once from ETKDG's start,
        once from random coordinates, as RDKit advises when the distance-geometry start fails).
    """
    from rdkit.Chem import rdDistGeom, rdForceFieldHelpers
    from rdkit.rdBase import BlockLogs

    _block = BlockLogs()  # noqa: F841 — RDKit's per-molecule warnings would flood the terminal
    for random_coords in (False, True):
        params = rdDistGeom.ETKDGv3()
        params.randomSeed = int(seed)
        params.useRandomCoords = random_coords
        params.embedFragmentsSeparately = separate_fragments
        params.numThreads = 1
        if hasattr(params, "timeout"):
            params.timeout = 10
        try:
            if rdDistGeom.EmbedMolecule(mol, params) == 0:
                break
        except (RuntimeError, ValueError):  # RDKit pre-condition violations on broken graphs
            return None
    else:
        return None
    if relax:
        try:
            if rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
                rdForceFieldHelpers.MMFFOptimizeMolecule(mol, maxIters=max_iters)
            elif rdForceFieldHelpers.UFFHasAllMoleculeParams(mol):
                rdForceFieldHelpers.UFFOptimizeMolecule(mol, maxIters=max_iters)
        except Exception:  # noqa: BLE001 — a force-field failure keeps the ETKDG geometry
            pass
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
    return pos if np.isfinite(pos).all() else None
