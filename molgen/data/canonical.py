"""Canonical SMILES of the QM9 molecules, cached: the identity used for novelty against training data.

molgen's sample metrics identify a molecule by the canonical, non-isomeric SMILES of its largest
fragment (:func:`molgen.chem.build.largest_fragment_smiles`); QM9's own SMILES strings are written
differently, so they are canonicalized the same way once and cached next to the processed dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from rdkit import Chem
from rdkit.rdBase import BlockLogs

from molgen.chem.build import largest_fragment_smiles
from molgen.data.qm9 import QM9Data, resolve_cache_dir
from molgen.io_utils import atomic_open

logger = logging.getLogger(__name__)
_VERSION = "1"


def canonicalize(smiles: str) -> str | None:
    """QM9 SMILES -> molgen's molecule identity (None if RDKit cannot parse it)."""
    _block = BlockLogs()  # noqa: F841
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else largest_fragment_smiles(mol)


def canonical_qm9_smiles(data: QM9Data, cache_dir: str | Path | None = None) -> list[str | None]:
    """One canonical SMILES per QM9 molecule (``None`` where RDKit fails), cached on disk."""
    digest = hashlib.sha256(("\n".join(data.smiles) + _VERSION).encode()).hexdigest()[:16]
    path = resolve_cache_dir(cache_dir) / f"qm9-canonical-{digest}.json"
    if path.is_file():
        try:
            out = json.loads(path.read_text())
            if isinstance(out, list) and len(out) == data.num_molecules:
                return out
        except (OSError, ValueError):
            pass
        logger.warning("canonical SMILES cache %s is unusable; rebuilding it", path)
    out = [canonicalize(s) for s in data.smiles]
    with atomic_open(path, "w") as fh:
        json.dump(out, fh)
    return out
