"""Chemistry layer: EDM bond rule, stability, RDKit building, molecule files, basic metrics.

The QM9 tests pin the EDM protocol (Hoogeboom et al. 2022) on the dataset itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from molgen.chem.bonds import bond_order, bond_order_matrix, distance_matrix
from molgen.chem.build import build_mol, largest_fragment_smiles, mol_to_smiles, sanitize
from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.chem.io import (
    INVALID_SMILES,
    read_xyz,
    write_molecules,
    write_sdf,
    write_smiles,
    write_xyz,
)
from molgen.chem.stability import (
    atom_stability,
    expected_valence,
    molecule_stability,
    stability_counts,
)
from molgen.errors import MolgenError
from molgen.metrics.basic import basic_metrics, invalid_reasons

# ---------------------------------------------------------------- hand-made molecules


def _mol(symbols: str, positions, charges=None, **properties) -> Molecule3D:
    types = np.array([ELEMENT_INDEX[s] for s in symbols.split()])
    q = None if charges is None else np.asarray(charges)
    return Molecule3D(types, np.asarray(positions, dtype=np.float64), q, dict(properties))


_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)


def methane(offset=(0.0, 0.0, 0.0)) -> Molecule3D:
    pos = np.vstack([[0.0, 0.0, 0.0], 1.09 * _TETRAHEDRON]) + np.asarray(offset)
    return _mol("C H H H H", pos)


def water(offset=(0.0, 0.0, 0.0)) -> Molecule3D:
    half = np.deg2rad(104.5 / 2)
    pos = [[0, 0, 0], [0.96 * np.sin(half), 0.96 * np.cos(half), 0],
           [-0.96 * np.sin(half), 0.96 * np.cos(half), 0]]  # fmt: skip
    return _mol("O H H", np.asarray(pos) + np.asarray(offset))


def ethylene() -> Molecule3D:
    a = np.deg2rad(121.3)
    h = 1.087 * np.array([np.cos(np.pi - a), np.sin(np.pi - a)])
    pos = [[-0.665, 0, 0], [0.665, 0, 0],
           [-0.665 - h[0], h[1], 0], [-0.665 - h[0], -h[1], 0],
           [0.665 + h[0], h[1], 0], [0.665 + h[0], -h[1], 0]]  # fmt: skip
    return _mol("C C H H H H", pos)


def pentavalent_carbon() -> Molecule3D:
    """C with five H at 1.0 Å: sum of bond orders 5, RDKit rejects the valence."""
    pos = [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]]
    return _mol("C H H H H H", pos)


def ammonium(charged: bool) -> Molecule3D:
    pos = np.vstack([[0.0, 0.0, 0.0], 1.03 * _TETRAHEDRON])
    return _mol("N H H H H", pos, charges=[1, 0, 0, 0, 0] if charged else None)


# ---------------------------------------------------------------- bond rule


@pytest.mark.parametrize(
    ("a", "b", "distance", "order"),
    [
        ("C", "C", 1.53, 1),
        ("C", "C", 1.33, 2),
        ("C", "C", 1.20, 3),
        ("C", "C", 1.6399, 1),
        ("C", "C", 1.6401, 0),
        ("H", "H", 0.74, 1),
        ("H", "H", 0.90, 0),
        ("C", "H", 1.09, 1),
        ("H", "C", 1.20, 0),
        ("C", "O", 1.21, 2),
        ("O", "C", 1.13, 3),
        ("N", "O", 1.10, 2),  # no N–O triple entry: stops at double
        ("C", "F", 1.00, 1),  # no C–F double entry: stops at single
        ("F", "F", 1.60, 0),
    ],
)
def test_bond_order_hand_made_pairs(a: str, b: str, distance: float, order: int) -> None:
    assert bond_order(a, b, distance) == order
    assert bond_order(b, a, distance) == order


def test_bond_order_unknown_element() -> None:
    with pytest.raises(KeyError):
        bond_order("C", "S", 1.5)


def test_bond_order_matrix_matches_scalar_rule_on_random_molecules() -> None:
    rng = np.random.default_rng(0)
    n_pairs = np.zeros(4, dtype=int)
    for _ in range(200):
        n = int(rng.integers(1, 16))
        types = rng.integers(0, len(ELEMENTS), size=n)
        pos = rng.uniform(0.0, 2.2, size=(n, 3)).astype(rng.choice([np.float32, np.float64]))
        bonds = bond_order_matrix(types, pos)
        assert bonds.shape == (n, n) and np.issubdtype(bonds.dtype, np.integer)
        assert np.array_equal(bonds, bonds.T)
        assert not bonds.diagonal().any()
        dist = distance_matrix(pos)
        for i in range(n):
            for j in range(n):
                if i != j:
                    expected = bond_order(ELEMENTS[types[i]], ELEMENTS[types[j]], dist[i, j])
                    assert bonds[i, j] == expected, (types[i], types[j], dist[i, j])
                    n_pairs[expected] += 1
    assert (n_pairs > 0).all(), "random inputs should exercise every bond order"


def test_bond_order_matrix_empty_and_mismatched() -> None:
    assert bond_order_matrix(np.zeros(0, int), np.zeros((0, 3))).shape == (0, 0)
    with pytest.raises(ValueError):
        bond_order_matrix(np.zeros(2, int), np.zeros((3, 3)))


# ---------------------------------------------------------------- stability


@pytest.mark.parametrize("factory", [methane, water, ethylene])
def test_hand_made_molecules_are_stable(factory) -> None:
    mol = factory()
    assert atom_stability(mol.atom_types, mol.positions).all()
    assert molecule_stability(mol.atom_types, mol.positions) == (mol.num_atoms, mol.num_atoms, True)


def test_broken_molecule_is_unstable() -> None:
    mol = pentavalent_carbon()
    stable = atom_stability(mol.atom_types, mol.positions)
    assert stable.tolist() == [False, True, True, True, True, True]
    assert molecule_stability(mol.atom_types, mol.positions) == (5, 6, False)


def test_charges_are_ignored_by_default_and_used_when_given() -> None:
    plain, charged = ammonium(False), ammonium(True)
    assert not molecule_stability(plain.atom_types, plain.positions)[2]
    assert molecule_stability(charged.atom_types, charged.positions, charged.charges)[2]
    # octet-rule valences: N+ 4, N- 2, O+ 3, O- 1, C± 3, F- 0
    types = np.array([ELEMENT_INDEX[s] for s in "N N O O C C F H".split()])
    q = np.array([1, -1, 1, -1, 1, -1, -1, 0])
    assert expected_valence(types, q).tolist() == [4, 2, 3, 1, 3, 3, 0, 1]
    assert expected_valence(types).tolist() == [3, 3, 2, 2, 4, 4, 1, 1]
    counts = stability_counts([charged, methane()])
    assert counts == {"atom_stability": 9 / 10, "mol_stability": 0.5}
    assert stability_counts([charged, methane()], use_charges=True)["mol_stability"] == 1.0


def test_stability_counts_empty() -> None:
    assert stability_counts([]) == {"atom_stability": 0.0, "mol_stability": 0.0}


# ---------------------------------------------------------------- RDKit


@pytest.mark.parametrize(("factory", "smiles"), [(methane, "C"), (water, "O"), (ethylene, "C=C")])
def test_hand_made_molecules_are_valid_with_right_smiles(factory, smiles: str) -> None:
    mol = factory()
    m = build_mol(mol)
    assert m.GetNumAtoms() == mol.num_atoms
    assert m.GetNumConformers() == 1 and m.GetConformer().Is3D()
    assert np.allclose(m.GetConformer().GetPositions(), mol.positions)
    sanitized, reason = sanitize(m)
    assert reason is None and sanitized is not None
    assert largest_fragment_smiles(sanitized) == smiles
    assert mol_to_smiles(mol) == smiles


def test_explicit_hydrogen_smiles_is_edm_string() -> None:
    sanitized, _ = sanitize(build_mol(water()))
    assert largest_fragment_smiles(sanitized, explicit_hydrogens=True) == "[H]O[H]"


def test_broken_molecule_is_invalid_with_reason() -> None:
    m = build_mol(pentavalent_carbon())
    assert sanitize(m) == (None, "valence")
    assert m.GetNumAtoms() == 6  # the input is left untouched
    assert mol_to_smiles(pentavalent_carbon()) is None
    assert sanitize(Chem.Mol()) == (None, "empty")


def test_formal_charges_reach_rdkit() -> None:
    assert sanitize(build_mol(ammonium(False)))[1] == "valence"
    assert mol_to_smiles(ammonium(True)) == "[NH4+]"


def test_build_mol_with_given_bonds_and_bad_bonds() -> None:
    mol = water()
    bonds = np.zeros((3, 3), dtype=int)
    bonds[0, 1] = bonds[1, 0] = 1
    m = build_mol(mol, bonds)
    assert m.GetNumBonds() == 1
    with pytest.raises(ValueError):
        build_mol(mol, np.zeros((2, 2), dtype=int))


def test_largest_fragment_is_used() -> None:
    both = methane()
    w = water(offset=(6.0, 0.0, 0.0))
    mixture = Molecule3D(
        np.concatenate([both.atom_types, w.atom_types]),
        np.concatenate([both.positions, w.positions]),
    )
    assert mol_to_smiles(mixture) == "C"


# ---------------------------------------------------------------- files


def _samples() -> list[Molecule3D]:
    first = methane()
    first.properties = {"gap": 6.5, "mu": 2.0}
    return [first, pentavalent_carbon(), ammonium(True), ethylene()]


def test_sdf_round_trip(tmp_path) -> None:
    mols = _samples()
    path = tmp_path / "out" / "mols.sdf"
    write_sdf(mols, path)
    records = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    assert len(records) == len(mols)  # invalid molecules are written, not dropped
    for mol, rec in zip(mols, records, strict=True):
        assert rec is not None
        assert [a.GetSymbol() for a in rec.GetAtoms()] == mol.symbols
        assert np.allclose(rec.GetConformer().GetPositions(), mol.positions, atol=1e-4)
        assert rec.GetNumBonds() == int(np.count_nonzero(np.triu(bond_order_matrix(
            mol.atom_types, mol.positions))))  # fmt: skip
    assert records[0].GetProp("SMILES") == "C"
    assert float(records[0].GetProp("gap")) == 6.5
    assert records[1].GetProp("INVALID_REASON") == "valence"
    assert not records[1].HasProp("SMILES")
    assert records[2].GetAtomWithIdx(0).GetFormalCharge() == 1
    assert records[3].GetProp("SMILES") == "C=C"
    with BlockLogs():
        sanitized = list(Chem.SDMolSupplier(str(path), removeHs=False))
    assert [m is not None for m in sanitized] == [True, False, True, True]


def test_xyz_round_trip(tmp_path) -> None:
    mols = _samples()
    path = tmp_path / "mols.xyz"
    write_molecules(mols, path)
    back = read_xyz(path)
    assert len(back) == len(mols)
    for mol, got in zip(mols, back, strict=True):
        assert np.array_equal(got.atom_types, mol.atom_types)
        assert np.allclose(got.positions, mol.positions, atol=1e-7)
        assert got.properties == mol.properties
    assert back[2].charges.tolist() == [1, 0, 0, 0, 0]
    assert back[0].charges is None
    assert path.read_text().splitlines()[1].startswith("smiles=C ")
    assert mol_to_smiles(back[3]) == "C=C"


def test_read_xyz_tolerates_blank_lines_extra_columns_and_atomic_numbers(tmp_path) -> None:
    path = tmp_path / "a.xyz"
    path.write_text("\n3\nwater, no tokens\n8 0 0 0 -0.8\nh 0.96 0 0 0.4\nH -0.24 0.93 0 0.4\n\n"
                    "0\nempty\n")  # fmt: skip
    got = read_xyz(path)
    assert [m.num_atoms for m in got] == [3, 0]
    assert got[0].symbols == ["O", "H", "H"] and got[0].properties == {}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("3\nc\nC 0 0 0\nH 0 0 x\nH 1 1 1\n", 4),
        ("2\nc\nC 0 0 0\nXx 0 0 1\n", 4),
        ("2\nc\nC 0 0 0\nH 0 0\n", 4),
        ("two\nc\n", 1),
        ("1\nc\nC 0 0 0\n3\nc\nC 0 0 0\n", 6),
    ],
)
def test_read_xyz_malformed_names_the_line(tmp_path, text: str, line: int) -> None:
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(MolgenError, match=rf"bad\.xyz:{line}:"):
        read_xyz(path)


def test_read_xyz_missing_file(tmp_path) -> None:
    with pytest.raises(MolgenError, match="cannot read"):
        read_xyz(tmp_path / "nope.xyz")


def test_smiles_file_keeps_one_line_per_molecule(tmp_path) -> None:
    path = tmp_path / "mols.smi"
    write_smiles(_samples(), path)
    lines = path.read_text().splitlines()
    assert lines == ["C", INVALID_SMILES, "[NH4+]", "C=C"]
    assert Chem.MolFromSmiles(INVALID_SMILES) is None


def test_write_molecules_dispatch_and_errors(tmp_path) -> None:
    mols = _samples()
    for suffix in (".sdf", ".xyz", ".smi"):
        write_molecules(mols, tmp_path / f"m{suffix.upper()}")
        assert (tmp_path / f"m{suffix.upper()}").stat().st_size > 0
    with pytest.raises(MolgenError, match=r"\.sdf, \.xyz, \.smi"):
        write_molecules(mols, tmp_path / "m.pdb")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(MolgenError, match="cannot write"):
        write_molecules(mols, blocker / "sub" / "m.sdf")
    (tmp_path / "a_dir.xyz").mkdir()
    with pytest.raises(MolgenError, match="cannot write"):
        write_xyz(mols, tmp_path / "a_dir.xyz")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- basic metrics


def test_basic_metrics_hand_made() -> None:
    mols = [methane(), water(), ethylene(), methane(offset=(1.0, 2.0, 3.0)), pentavalent_carbon()]
    m = basic_metrics(mols, train_smiles={"C", "CC"})
    assert m["n"] == 5
    assert m["validity"] == pytest.approx(4 / 5)
    assert m["uniqueness"] == pytest.approx(3 / 4)
    assert m["valid_unique"] == pytest.approx(3 / 5)
    assert m["mol_stability"] == pytest.approx(4 / 5)
    assert m["atom_stability"] == pytest.approx(24 / 25)
    assert m["connected"] == 1.0
    assert m["novelty"] == pytest.approx(2 / 3)
    assert "novelty" not in basic_metrics(mols)
    assert invalid_reasons(mols) == {"valence": 1}


def test_basic_metrics_disconnected_and_empty() -> None:
    both = methane()
    w = water(offset=(6.0, 0.0, 0.0))
    mixture = Molecule3D(
        np.concatenate([both.atom_types, w.atom_types]),
        np.concatenate([both.positions, w.positions]),
    )
    assert basic_metrics([mixture, water()])["connected"] == 0.5
    empty = basic_metrics([], train_smiles=set())
    assert empty["n"] == 0
    assert all(v == 0 for v in empty.values())
    assert invalid_reasons([]) == {}
    no_atoms = Molecule3D(np.zeros(0, int), np.zeros((0, 3)))
    assert basic_metrics([no_atoms])["validity"] == 0.0
    assert invalid_reasons([no_atoms]) == {"empty": 1}


# ---------------------------------------------------------------- EDM protocol on QM9


def test_qm9_edm_stability_all_molecules(qm9) -> None:
    """EDM reports atom 99.0% / molecule 95.2% on QM9; all 130,831 molecules, positions only."""
    types = qm9.atom_types.numpy()
    pos = qm9.positions.numpy()
    ptr = qm9.ptr.numpy()
    assert len(ptr) - 1 == 130_831
    stable_atoms = stable_mols = 0
    for lo, hi in zip(ptr[:-1].tolist(), ptr[1:].tolist(), strict=True):
        k, n, ok = molecule_stability(types[lo:hi], pos[lo:hi])
        stable_atoms += k
        stable_mols += ok
    atom_stab = stable_atoms / len(types)
    mol_stab = stable_mols / (len(ptr) - 1)
    assert atom_stab >= 0.989, atom_stab
    assert abs(mol_stab - 0.952) <= 0.003, mol_stab


def test_qm9_edm_validity_random_subset(qm9) -> None:
    """EDM reports 97.7% RDKit validity on QM9 (bonds inferred from positions, charges ignored)."""
    idx = np.random.default_rng(0).choice(len(qm9.ptr) - 1, size=5000, replace=False)
    mols = []
    for i in idx.tolist():
        full = qm9.molecule(i)
        mols.append(Molecule3D(full.atom_types, full.positions))
    metrics = basic_metrics(mols)
    assert metrics["validity"] >= 0.95, metrics
    assert metrics["uniqueness"] >= 0.99, metrics
    # point clouds keep EDM's (lenient) validity; no own bonds, so no *_graph figures
    assert metrics["validity_lenient"] == metrics["validity"] and "mol_stability_graph" not in metrics


def test_generated_bonds_and_missing_structure() -> None:
    """A family's own bonds decide validity (not stability); no bonds and no coordinates is invalid."""
    import numpy as np

    from molgen.chem.build import build_mol, mol_to_smiles, sanitize
    from molgen.chem.elements import Molecule3D
    from molgen.chem.stability import stability_counts
    from molgen.metrics.basic import basic_metrics

    # water with the hydrogens 5 Å away: the distance rule finds no bond, the given bonds do
    far = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    bonds = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    water = Molecule3D(atom_types=np.array([3, 0, 0]), positions=far, bonds=bonds)
    assert mol_to_smiles(water) == "O"
    # stability names always mean EDM's distance rule: three isolated atoms
    assert stability_counts([water]) == {"atom_stability": 0.0, "mol_stability": 0.0}
    # a structure-less molecule (e.g. an unparsable SMILES) is invalid, not three isolated atoms
    lost = Molecule3D(atom_types=np.array([3, 0, 0]), positions=np.full((3, 3), np.nan))
    assert sanitize(build_mol(lost)) == (None, "no_structure")
    m = basic_metrics([water, lost])
    assert m["validity"] == 0.5 and m["validity_lenient"] == 0.5
    assert m["mol_stability"] == 0.0 and m["atom_stability"] == 0.0
    assert m["mol_stability_graph"] == 0.5 and m["atom_stability_graph"] == 0.5
