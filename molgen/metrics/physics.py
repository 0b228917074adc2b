"""The ``physics`` metric group of ``molgen benchmark``: is each 3D molecule physically plausible?

For every valid 3D record (the sanitized RDKit molecule with its file's bonds, or EDM's, and its
coordinates; explicit hydrogens as written):

- **MMFF94 energy** of the molecule as given, per atom (kcal/mol/atom);
- **local relaxation**: MMFF94 minimization starting from the given coordinates (at most
  :data:`MAX_ITERS` iterations, no conformer search, so the molecule stays in its own basin):
  its energy, the **strain** ``E_given - E_relaxed`` (kcal/mol, per molecule and per atom) and the
  **relaxation RMSD** (Å, heavy atoms after optimal superposition; all atoms for molecules without two
  heavy atoms) — the energy and RMSD criteria that MolTD and "GEOM-drugs revisited" report;
- the molecule-level **PoseBusters** checks (``posebusters`` package, config ``mol``: sanitization,
  InChI, connectivity, radicals, bond lengths, bond angles, internal steric clash, aromatic-ring and
  double-bond flatness, non-flatness of saturated rings, internal energy against an ETKDG ensemble).

Keys (``physics/...``):

- ``molecules``: records with an MMFF94 energy; ``unmeasured/<reason>``: every other record, counted
  (``invalid``: not a valid molecule or no 3D coordinates; ``mmff_untyped``: MMFF94 has no parameters
  for one of its atoms, e.g. boron; ``mmff_error``: the force field failed);
- ``energy_per_atom``, ``relaxed_energy_per_atom``, ``strain``, ``strain_per_atom``, ``relax_rmsd``:
  medians over the measured molecules (energies are heavy-tailed: one clash is 10^5 kcal/mol), with
  ``strain_mean`` and ``relax_rmsd_mean`` beside; ``relax_converged``: fraction converged;
- ``pb/<check>``: fraction of **all records** passing each PoseBusters check (an invalid record,
  or a check that could not run, fails: e.g. ``internal_energy`` when ETKDG cannot embed the
  comparison ensemble of a strained polycycle, which happens for real QM9 molecules too), and
  ``pb_valid``: passing every check ("PB-valid").

Not in ``all``: the group costs seconds per hundred molecules; ask for it by name
(``--metrics all,physics`` or ``--metrics physics``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

logger = logging.getLogger(__name__)

#: Most MMFF94 minimization iterations of the local relaxation.
MAX_ITERS = 2000
#: The PoseBusters configuration (molecule-level checks, no protein or reference pose).
POSEBUSTERS_CONFIG = "mol"


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD of two ``[n, 3]`` point sets after the optimal rotation and translation (Kabsch)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    u, s, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    s[-1] *= d  # a proper rotation only (no reflection)
    sq = (a * a).sum() + (b * b).sum() - 2.0 * s.sum()
    return float(np.sqrt(max(sq, 0.0) / len(a)))


def mmff_relaxation(mol: Chem.Mol, max_iters: int = MAX_ITERS) -> dict[str, float] | str:
    """MMFF94 energies before and after a local relaxation of ``mol``'s conformer, the strain and the
    relaxation RMSD; a reason string (``mmff_untyped`` / ``mmff_error``) when MMFF cannot do it.
    ``mol`` is not modified."""
    work = Chem.Mol(mol)
    RDLogger.DisableLog("rdApp.*")
    try:
        props = AllChem.MMFFGetMoleculeProperties(work, mmffVariant="MMFF94")
        if props is None or not AllChem.MMFFHasAllMoleculeParams(work):
            return "mmff_untyped"
        ff = AllChem.MMFFGetMoleculeForceField(work, props, confId=0)
        if ff is None:
            return "mmff_error"
        before = np.asarray(ff.Positions(), dtype=float).reshape(-1, 3)
        e_given = ff.CalcEnergy()
        converged = ff.Minimize(maxIts=max_iters) == 0
        e_relaxed = ff.CalcEnergy()
        after = np.asarray(ff.Positions(), dtype=float).reshape(-1, 3)
    except (RuntimeError, ValueError) as exc:
        logger.debug("MMFF94 failed: %s", exc)
        return "mmff_error"
    finally:
        RDLogger.EnableLog("rdApp.*")
    if not (np.isfinite(e_given) and np.isfinite(e_relaxed)):
        return "mmff_error"
    n = work.GetNumAtoms()
    heavy = np.array([a.GetAtomicNum() > 1 for a in work.GetAtoms()])
    keep = heavy if heavy.sum() >= 2 else np.ones(n, dtype=bool)
    return {"energy_per_atom": e_given / n, "relaxed_energy_per_atom": e_relaxed / n,
            "strain": e_given - e_relaxed, "strain_per_atom": (e_given - e_relaxed) / n,
            "relax_rmsd": kabsch_rmsd(before[keep], after[keep]), "converged": float(converged)}


def posebusters_passes(mols: Sequence[Chem.Mol], n_jobs: int = 1) -> dict[str, np.ndarray]:
    """Check name -> ``[len(mols)]`` booleans of PoseBusters' molecule-level checks (a check that could
    not run is ``False``)."""
    try:
        from posebusters import PoseBusters
    except ImportError:
        from molgen.errors import MolgenError

        raise MolgenError("the physics metrics need the posebusters package: pip install 'posebusters>=0.6'") from None
    if not mols:
        return {}
    pb_logger = logging.getLogger("posebusters")  # a check that cannot run warns per molecule: counted instead
    level = pb_logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RDLogger.DisableLog("rdApp.*")
        pb_logger.setLevel(logging.ERROR)
        try:
            table = PoseBusters(config=POSEBUSTERS_CONFIG, max_workers=0 if n_jobs <= 1 else n_jobs).bust(
                mol_pred=list(mols), full_report=False)
        finally:
            RDLogger.EnableLog("rdApp.*")
            pb_logger.setLevel(level)
    if len(table) != len(mols):
        raise RuntimeError(f"PoseBusters returned {len(table)} rows for {len(mols)} molecules")
    out = {}
    for column in table.columns:
        if column == "mol_pred_loaded":
            continue
        values = table[column].to_numpy()
        out[str(column)] = np.array([v is True or v is np.True_ for v in values], dtype=bool)
    return out


def physics_metrics(mols: Sequence[Chem.Mol | None], *, n_jobs: int = 1, max_iters: int = MAX_ITERS) -> dict[str, float]:
    """The ``physics`` group for one entry per input record (the valid RDKit molecule with its 3D
    conformer, ``None`` otherwise); see the module doc for the keys."""
    total = len(mols)
    if total == 0:
        return {}
    unmeasured: dict[str, int] = {}
    rows: list[dict[str, float]] = []
    valid = []
    for mol in mols:
        if mol is None or mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
            unmeasured["invalid"] = unmeasured.get("invalid", 0) + 1
            continue
        valid.append(mol)
        result = mmff_relaxation(mol, max_iters)
        if isinstance(result, str):
            unmeasured[result] = unmeasured.get(result, 0) + 1
        else:
            rows.append(result)
    out: dict[str, float] = {"physics/molecules": float(len(rows))}
    out.update({f"physics/unmeasured/{k}": float(v) for k, v in sorted(unmeasured.items())})
    if rows:
        col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
        for key in ("energy_per_atom", "relaxed_energy_per_atom", "strain", "strain_per_atom", "relax_rmsd"):
            out[f"physics/{key}"] = float(np.median(col[key]))
        out["physics/strain_mean"] = float(col["strain"].mean())
        out["physics/relax_rmsd_mean"] = float(col["relax_rmsd"].mean())
        out["physics/relax_converged"] = float(col["converged"].mean())
    passes = posebusters_passes(valid, n_jobs=n_jobs)
    if passes:
        for check, ok in passes.items():
            out[f"physics/pb/{check}"] = float(ok.sum()) / total
        out["physics/pb_valid"] = float(np.logical_and.reduce(list(passes.values())).sum()) / total
    return out
