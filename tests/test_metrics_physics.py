"""The ``physics`` metric group: Kabsch RMSD against SciPy, MMFF strain of relaxed and distorted molecules,
PoseBusters checks, counted failures, and its place in ``molgen benchmark``."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molgen.metrics.physics import kabsch_rmsd, mmff_relaxation, physics_metrics, posebusters_passes


def test_kabsch_rmsd_matches_scipy_alignment() -> None:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 3))
    moved = Rotation.random(random_state=1).apply(a) + np.array([3.0, -1.0, 2.0])
    assert kabsch_rmsd(a, moved) < 1e-9  # a rigid motion is no deviation
    b = moved + rng.normal(scale=0.3, size=a.shape)
    _, rssd = Rotation.align_vectors(b - b.mean(0), a - a.mean(0))
    assert kabsch_rmsd(a, b) == pytest.approx(rssd / np.sqrt(len(a)), rel=1e-9)
    assert kabsch_rmsd(a, a * [-1.0, 1.0, 1.0]) > 0.1  # a mirror image is no rotation of a 3D point set


def _mmff_molecule(smiles: str) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol, maxIters=5000)
    return mol


def _stretched(mol: Chem.Mol, atom: int, towards: int, by: float) -> Chem.Mol:
    """``atom`` moved ``by`` Å away from ``towards`` along their bond."""
    out = Chem.Mol(mol)
    conf = out.GetConformer()
    p, q = np.array(conf.GetAtomPosition(atom)), np.array(conf.GetAtomPosition(towards))
    conf.SetAtomPosition(atom, (p + by * (p - q) / np.linalg.norm(p - q)).tolist())
    return out


def test_relaxed_molecule_has_no_strain_and_a_stretched_one_does() -> None:
    mol = _mmff_molecule("CCCO")
    relaxed = mmff_relaxation(mol)
    props = AllChem.MMFFGetMoleculeProperties(mol)
    energy = AllChem.MMFFGetMoleculeForceField(mol, props).CalcEnergy()
    assert relaxed["energy_per_atom"] * mol.GetNumAtoms() == pytest.approx(energy)
    assert abs(relaxed["strain"]) < 1e-3 and relaxed["relax_rmsd"] < 1e-2 and relaxed["converged"] == 1.0
    o = next(a.GetIdx() for a in mol.GetAtoms() if a.GetSymbol() == "O")
    c = mol.GetAtomWithIdx(o).GetNeighbors()[0].GetIdx()
    bad = mmff_relaxation(_stretched(mol, o, c, 0.7))
    assert bad["strain"] > 20.0 and bad["relax_rmsd"] > 0.1
    assert Chem.MolToMolBlock(mol) == Chem.MolToMolBlock(Chem.Mol(mol))  # the input is not modified
    passes = posebusters_passes([mol, _stretched(mol, o, c, 0.7)])
    assert all(ok[0] for ok in passes.values())  # the MMFF minimum passes every check
    assert not passes["bond_lengths"][1]


def test_failures_are_counted_with_a_reason() -> None:
    good = _mmff_molecule("CC(=O)N")
    boron = Chem.AddHs(Chem.MolFromSmiles("B(C)(C)C"))  # MMFF94 has no boron parameters
    AllChem.EmbedMolecule(boron, randomSeed=1)
    flat = Chem.AddHs(Chem.MolFromSmiles("CO"))  # 2D coordinates only: not a 3D record
    AllChem.Compute2DCoords(flat)
    out = physics_metrics([good, None, boron, flat])
    assert out["physics/molecules"] == 1.0
    assert out["physics/unmeasured/invalid"] == 2.0 and out["physics/unmeasured/mmff_untyped"] == 1.0
    assert out["physics/molecules"] + sum(v for k, v in out.items() if "/unmeasured/" in k) == 4
    assert out["physics/pb/sanitization"] <= 2 / 4  # rates are over all records: invalid ones fail
    assert 1 / 4 <= out["physics/pb_valid"] <= 2 / 4
    assert physics_metrics([]) == {}


def test_benchmark_physics_group(tmp_path, qm9) -> None:
    from molgen.chem.io import write_sdf
    from molgen.metrics.suite import run_benchmark

    mols = [qm9.molecule(i) for i in range(4000, 4012)]
    write_sdf(mols, tmp_path / "q.sdf")
    (tmp_path / "ref.smi").write_text("\n".join(qm9.smiles[100:150]) + "\n")
    report = run_benchmark(str(tmp_path / "q.sdf"), reference=str(tmp_path / "ref.smi"), metrics="basic,physics",
                           n_jobs=1)
    m = report.metrics
    assert m["physics/molecules"] + sum(v for k, v in m.items() if k.startswith("physics/unmeasured/")) == 12
    assert m["physics/pb_valid"] > 0.8 and 0 < m["physics/relax_rmsd"] < 0.5  # DFT geometries are near MMFF's
    assert not any(k.startswith("physics/") for k in run_benchmark(
        str(tmp_path / "q.sdf"), reference=str(tmp_path / "ref.smi"), metrics="basic", n_jobs=1).metrics)
    (tmp_path / "s.smi").write_text("CCO\nCCN\n")
    smiles = run_benchmark(str(tmp_path / "s.smi"), reference=str(tmp_path / "ref.smi"), metrics="basic,physics",
                           n_jobs=1)
    assert "3D" in smiles.skipped["physics"] and not any(k.startswith("physics/") for k in smiles.metrics)
