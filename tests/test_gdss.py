"""The GDSS 2D protocol (molgen.metrics.gdss, scripts/gdss_report.py) on hand-made molecules."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from molgen.chem.elements import ELEMENT_INDEX, Molecule3D
from molgen.metrics.gdss import ANCHORS, gdss_metrics, judge

ROOT = Path(__file__).resolve().parents[1]


def graph(smiles: str, *, drop_h: int = 0, coords: bool = False) -> Molecule3D:
    """An explicit-H molecule with its own bonds (a graph family's output); ``drop_h`` hydrogens
    removed from the end; ``coords``: ETKDG positions and *no* bonds (a 3D point cloud)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    Chem.Kekulize(mol, clearAromaticFlags=True)
    n = mol.GetNumAtoms() - drop_h
    bonds = np.zeros((n, n), dtype=np.int64)
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        if i < n and j < n:
            bonds[i, j] = bonds[j, i] = int(b.GetBondTypeAsDouble())
    types = np.array([ELEMENT_INDEX[a.GetSymbol()] for a in mol.GetAtoms()][:n])
    charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()][:n])
    if coords:
        from rdkit.Chem import AllChem

        assert AllChem.EmbedMolecule(mol, randomSeed=0) == 0
        AllChem.MMFFOptimizeMolecule(mol)
        pos = mol.GetConformer().GetPositions()[:n]
        return Molecule3D(atom_types=types, positions=pos, charges=charges)
    return Molecule3D(atom_types=types, positions=np.full((n, 3), np.nan), charges=charges, bonds=bonds)


def test_smiles_lists_validity_uniqueness_novelty():
    samples = ["CCO", "OCC", "C1CC", "c1ccccc1", "C(C)(C)(C)(C)C", "", None]
    m = gdss_metrics(samples, test_smiles=None, train_smiles=["C(O)C", "CCCC"])
    assert m["n"] == 7 and m["n_valid"] == 3
    assert m["validity_wo_correction"] == pytest.approx(3 / 7)
    assert m["uniqueness"] == pytest.approx(2 / 3)  # CCO twice, benzene: over the valid ones
    assert m["novelty"] == pytest.approx(1 / 2)  # of {CCO, benzene}, benzene is not in train
    assert "fcd_test" not in m
    assert sum(m["invalid_reasons"].values()) == 4


def test_explicit_h_reduced_to_heavy_atoms():
    explicit = "[H]OC([H])([H])C([H])([H])[H]"
    assert judge(explicit).smiles == "CCO"
    assert judge(graph("CCO")).smiles == "CCO"
    m = gdss_metrics([explicit, graph("CCO"), "CCO"], test_smiles=None, train_smiles=None)
    assert m["validity_wo_correction"] == 1.0 and m["uniqueness"] == pytest.approx(1 / 3)


def test_graph_validity_is_strict_on_the_models_own_graph():
    ok, radical = graph("CC=O"), graph("CC=O", drop_h=1)  # one H missing: a radical
    over = graph("CCO")
    over.bonds = over.bonds.copy()
    over.bonds[0, 1] = over.bonds[1, 0] = 2  # C=C with all hydrogens kept: pentavalent carbons
    m = gdss_metrics([ok, radical, over], test_smiles=None, train_smiles=None)
    assert m["validity_wo_correction"] == pytest.approx(1 / 3)
    assert m["validity_lenient"] == pytest.approx(2 / 3)  # GDSS's check lets RDKit add the H
    assert judge(radical).reason == "implicit_h" and judge(over).reason == "valence"


def test_point_clouds_use_edm_bonds_and_disconnected_graphs_are_valid():
    cloud = graph("CC(=O)N", coords=True)
    assert cloud.bonds is None and judge(cloud).smiles == "CC(N)=O"
    empty = Molecule3D(atom_types=np.array([1, 1]), positions=np.full((2, 3), np.nan))
    assert judge(empty).smiles is None and judge(empty).reason == "no_structure"
    two = judge("CCO.C")  # GDSS does not require one fragment; identity = largest fragment
    assert two.smiles == "CCO" and not two.connected


def test_qm9_train_sample_fcd_small(qm9):
    from molgen.data.canonical import canonicalize
    from molgen.data.qm9 import edm_splits

    splits = edm_splits(qm9.num_molecules)
    rs = np.random.RandomState(0)
    train = [qm9.smiles[i] for i in rs.choice(splits["train"].numpy(), 300, replace=False)]
    test = [canonicalize(qm9.smiles[i]) for i in rs.choice(splits["test"].numpy(), 300, replace=False)]
    real = gdss_metrics(train, test_smiles=test, train_smiles=train)
    assert real["validity_wo_correction"] == 1.0 and real["novelty"] == 0.0
    alkanes = gdss_metrics(["C" * k for k in range(1, 10)] * 30, test_smiles=test, train_smiles=None)
    # small sets bias FCD upwards (~2 at 300 vs 300); a wrong distribution is far above that
    assert real["fcd_test"] < 4.0 < 10.0 < alkanes["fcd_test"]


def test_qm9_graphs_have_the_identity_of_their_smiles(qm9):
    """A model's explicit-H graph of a QM9 molecule is that molecule for novelty (no spurious novels)."""
    from molgen.data.canonical import canonicalize

    smiles = [qm9.smiles[i] for i in range(0, qm9.num_molecules, qm9.num_molecules // 200)]
    graphs = [graph(s) for s in smiles]
    assert [judge(g).smiles for g in graphs] == [canonicalize(s) for s in smiles]
    m = gdss_metrics(graphs, test_smiles=None, train_smiles=smiles)
    assert m["validity_wo_correction"] == 1.0 and m["novelty"] == 0.0


def test_anchors_match_shared_anchors_file():
    path = ROOT.parent / "shared" / "ANCHORS.md"
    if not path.is_file():
        pytest.skip("../shared/ANCHORS.md not present")
    text = path.read_text()
    for a in ANCHORS:
        name = a.model.split(" (")[0]
        row = re.search(rf"^\| {re.escape(name)} [^|]*\| ([\d.]+) \| ([\d.]+) \|", text, re.M)
        assert row, name
        assert float(row.group(1)) == pytest.approx(100 * a.validity_wo_correction)
        assert float(row.group(2)) == pytest.approx(a.fcd_test)


def _script():
    spec = importlib.util.spec_from_file_location("gdss_report", ROOT / "scripts" / "gdss_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_helpers(tmp_path):
    mod = _script()
    f = tmp_path / "s.smi"
    f.write_text("SMILES\nCCO\n\nc1ccccc1 name\n")
    assert mod.read_smiles_file(str(f)) == ["CCO", "", "c1ccccc1"]
    lines = mod.markdown([("x", {"validity_wo_correction": 0.5, "fcd_test": 1.0, "n": 10}, "src")])
    assert lines[-1] == "| x | 50.00 | – | – | – | 1.000 | 10 | src |"


def test_skipping_embedding_keeps_the_samples():
    from molgen.generate import load_model
    from molgen.zoo import pretrained_checkpoint

    try:
        pretrained_checkpoint("smiles-ar-gap")
    except Exception:  # noqa: BLE001
        pytest.skip("smiles-ar-gap is not shipped")
    import molgen.models.smiles_chem as smiles_chem

    mod = _script()
    model = load_model(pretrained="smiles-ar-gap", device="cpu")
    embedded = model.sample(12, seed=3, temperature=0.8)
    original = smiles_chem.embed_conformer
    with mod.conformers_skipped(True):
        flat = model.sample(12, seed=3, temperature=0.8)
    assert smiles_chem.embed_conformer is original
    assert [m.smiles for m in flat] == [m.smiles for m in embedded]
    assert [judge(m).smiles for m in flat] == [judge(m).smiles for m in embedded]
    assert not any(m.has_coordinates for m in flat)


def test_evaluate_protocol_gdss_logs_into_a_run(tmp_path, monkeypatch, qm9) -> None:
    """``molgen evaluate --pretrained NAME --protocol gdss``: samples, scores, logs ``gdss/*``.
    The reference is a small slice of QM9 here (the real one embeds the whole test split once)."""
    from click.testing import CliRunner

    from molgen import cli as cli_module
    from molgen.metrics import gdss
    from molgen.metrics.fcd import fcd_stats

    test = [s for s in qm9.smiles[:300]]
    small = gdss.GDSSReference(test_smiles=test, train_smiles=frozenset(qm9.smiles[300:2000]),
                               train_pool=list(qm9.smiles[300:2000]), test_fcd=fcd_stats(test))
    monkeypatch.setattr(gdss, "qm9_gdss_reference", lambda cache_dir=None: small)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    result = CliRunner().invoke(cli_module.cli, ["evaluate", "--pretrained", "smiles-ar-gap", "--protocol", "gdss",
                                                 "-n", "12", "--sample-opt", "temperature=0.8"])
    assert result.exit_code == 0, result.output
    assert "gdss/validity_wo_correction" in result.output and "gdss/fcd_test" in result.output
