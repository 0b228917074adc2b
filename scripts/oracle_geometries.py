"""How much does the geometry source change the oracle's error? DFT vs ETKDG vs ETKDG + MMFF94.

The graph families (``vae``, ``smiles-ar``) get coordinates from RDKit, not from DFT; the oracle
that scores conditional samples was trained on QM9's DFT geometries. This script takes random
``Db`` molecules, predicts their properties from (a) the QM9 geometry, (b) an ETKDG conformer of
their SMILES, (c) that conformer relaxed with MMFF94 (:func:`molgen.chem.conformer.embed_conformer`),
and prints the oracle's MAE against the QM9 labels for each.

Usage::

    python scripts/oracle_geometries.py [-n 400] [--seed 0] [--oracle PATH ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.chem.conformer import embed_conformer  # noqa: E402
from molgen.chem.elements import ELEMENT_INDEX, Molecule3D  # noqa: E402
from molgen.conditional import DISPLAY_UNITS, oracle_predict  # noqa: E402
from molgen.data.qm9 import edm_splits, load_qm9  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.oracle import load_oracle  # noqa: E402


def _from_smiles(smiles: str, relax: bool, seed: int) -> Molecule3D:
    from rdkit import Chem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    types = np.asarray([ELEMENT_INDEX[a.GetSymbol()] for a in mol.GetAtoms()], dtype=np.int64)
    pos = embed_conformer(mol, seed, relax=relax)
    return Molecule3D(types, np.full((len(types), 3), np.nan) if pos is None else pos)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle", action="append", default=[], metavar="PATH",
                    help="oracle weights (repeatable, one table each on the same molecules; default: the shipped one)")
    args = ap.parse_args(argv)
    oracles = [load_oracle(p) for p in args.oracle] or [load_oracle()]
    data = load_qm9(None)
    db = edm_splits(data.num_molecules)["db"]
    idx = db[torch.from_numpy(np.random.RandomState(args.seed).permutation(len(db))[: args.n]).long()].tolist()
    sets = {
        "QM9 (DFT) geometry": [data.molecule(i) for i in idx],
        "ETKDG": [_from_smiles(data.smiles[i], False, args.seed) for i in idx],
        "ETKDG + MMFF94": [_from_smiles(data.smiles[i], True, args.seed) for i in idx],
    }
    print(f"Oracle MAE on {args.n} random Db molecules ({describe_machine()}); "
          f"command: python scripts/oracle_geometries.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    for oracle in oracles:
        props, rows = None, []
        for name, mols in sets.items():
            preds, props = oracle_predict(mols, oracle)
            cells = []
            for j, p in enumerate(props):
                err = np.abs(preds[:, j] - data.property(p)[idx].double().numpy())
                cells.append(f"{np.nanmean(err) * DISPLAY_UNITS.get(p, ('', 1.0))[1]:.4g}")
            rows.append(f"| {name} | {int(np.isfinite(preds).all(axis=1).sum())} | " + " | ".join(cells) + " |")
        units = [f"{p} ({DISPLAY_UNITS.get(p, ('', 1.0))[0]})" for p in props]
        print(f"\noracle version {oracle.version}:\n")
        print("| geometry | embedded | " + " | ".join(units) + " |")
        print("|---|---:|" + "---:|" * len(props))
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
