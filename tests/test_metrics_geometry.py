"""The ``geometry`` metric group: W1 of bond lengths / angles / torsions per type, TVs, wiring."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import rdMolTransforms

from molgen.chem.build import build_mol, sanitize
from molgen.chem.elements import ELEMENT_INDEX, Molecule3D
from molgen.chem.io import write_sdf, write_xyz
from molgen.metrics import geometry as G
from molgen.metrics import geometry_features as F
from molgen.metrics.embedding import wasserstein1

H, C, O = ELEMENT_INDEX["H"], ELEMENT_INDEX["C"], ELEMENT_INDEX["O"]


@pytest.fixture(scope="module")
def small_qm9(tmp_path_factory, qm9_small_source):
    """The 200 first QM9 molecules (fast to parse)."""
    from molgen.data.qm9 import load_qm9

    return load_qm9(tmp_path_factory.mktemp("geometry_small_qm9"), source_dir=qm9_small_source)


def _mols(data, rows) -> list[Chem.Mol]:
    mols, _ = G._qm9_mols(data, np.asarray(rows))
    return [mols[t] for t in F.measurable(mols)]


def _features(codes: dict[str, tuple[int, list[float]]], n: int = 1) -> F.GeometryFeatures:
    """Hand-made bond-length features: ``{label: (code, lengths)}``."""
    bc = np.concatenate([[code] * len(v) for code, v in codes.values()]).astype(np.int64)
    bl = np.concatenate([v for _, v in codes.values()]).astype(np.float64)
    empty = np.zeros(0)
    return F.GeometryFeatures(np.array([6, 1]), bc, bl, empty.astype(np.int64), empty, empty.astype(np.int64),
                              empty, n)


def _code(lo: int, hi: int, order: int) -> int:
    return int((F._RANK[lo] << 10) | (F._RANK[hi] << 3) | order)


# ----------------------------------------------------------------------------- W1 and its mean


def test_w1_by_type_against_hand_computed_values() -> None:
    ch, cc, cf = _code(6, 1, 1), _code(6, 6, 1), _code(6, 9, 1)
    assert (F.bond_label(ch), F.bond_label(cc), F.bond_label(_code(6, 8, 2)), F.bond_label(_code(6, 6, 4))) == \
        ("C-H", "C-C", "C--O", "C:C")
    # C-H: F_s steps 1.0 (1/2), 1.1 (1); F_r steps 1.1 (1/3), 1.2 (2/3), 1.3 (1):
    # W1 = 0.1 * (1/2) + 0.1 * (2/3) + 0.1 * (1/3) = 0.15
    samples = _features({"C-H": (ch, [1.0, 1.1]), "C-C": (cc, [1.5]), "C-F": (cf, [1.3])})
    reference = _features({"C-H": (ch, [1.1, 1.2, 1.3]), "C-C": (cc, [1.5, 1.5])})
    out = G.compare_kind("bond_length", samples, reference, min_count=1)
    assert out["geometry/bond_length_w1_by_type/C-H"] == pytest.approx(0.15, abs=1e-12)
    assert out["geometry/bond_length_w1_by_type/C-C"] == pytest.approx(0.0, abs=1e-12)
    # mean weighted by the reference counts (3 and 2)
    assert out["geometry/bond_length_w1"] == pytest.approx((3 * 0.15 + 2 * 0.0) / 5, abs=1e-12)
    assert out["geometry/bond_length_types_compared"] == 2
    # C-F exists only in the samples: counted, not dropped
    assert out["geometry/bond_length_uncompared_by_type/C-F/samples"] == 1
    assert out["geometry/bond_length_uncompared_by_type/C-F/reference"] == 0
    assert out["geometry/bond_length_uncompared_samples"] == 1 and out["geometry/bond_length_uncompared_reference"] == 0
    # below the minimum count on one side: not compared either
    out = G.compare_kind("bond_length", samples, reference, min_count=3)
    assert "geometry/bond_length_w1" not in out and out["geometry/bond_length_types_compared"] == 0
    assert out["geometry/bond_length_uncompared_by_type/C-H/reference"] == 3
    # a plain 1-D shift: W1 = 5
    assert wasserstein1([0.0, 1.0, 3.0], [5.0, 6.0, 8.0]) == pytest.approx(5.0)


def test_total_variation() -> None:
    assert G.total_variation(np.array([1, 1, 6, 6]), np.array([1, 6, 6, 6])) == pytest.approx(0.25)
    assert G.total_variation(np.array([1]), np.array([8])) == pytest.approx(1.0)
    assert G.total_variation(np.array([1, 6]), np.array([6, 1])) == 0.0


# ----------------------------------------------------------------------------- angles and torsions


def _hydrogen_peroxide(phi_deg: float) -> Chem.Mol:
    """H1-O1-O2-H2 with the dihedral ``phi_deg``, built by hand with its bonds."""
    phi = math.radians(phi_deg)
    pos = np.array([[0.0, 0.0, 0.0], [1.45, 0.0, 0.0], [-0.3, 0.9, 0.0], [1.75, 0.9 * math.cos(phi), 0.9 * math.sin(phi)]])
    bonds = np.zeros((4, 4), dtype=np.int64)
    for i, j in ((0, 1), (0, 2), (1, 3)):
        bonds[i, j] = bonds[j, i] = 1
    m, reason = sanitize(build_mol(Molecule3D(np.array([O, O, H, H]), pos, bonds=bonds)))
    assert reason is None
    return m


def _brute_force(m: Chem.Mol) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Every angle and torsion by Python loops and RDKit's own geometry functions."""
    conf = m.GetConformer()
    sym = [a.GetSymbol() for a in m.GetAtoms()]
    nbrs = [[n.GetIdx() for n in a.GetNeighbors()] for a in m.GetAtoms()]
    rank = lambda s: int(F._RANK[Chem.GetPeriodicTable().GetAtomicNumber(s)])  # noqa: E731
    angles, torsions = [], []
    for b in range(m.GetNumAtoms()):
        for a, c in itertools.combinations(sorted(nbrs[b]), 2):
            ends = sorted([sym[a], sym[c]], key=rank)
            angles.append((f"{ends[0]}-{sym[b]}-{ends[1]}", rdMolTransforms.GetAngleDeg(conf, a, b, c)))
    for bond in m.GetBonds():
        j, k = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        for i in nbrs[j]:
            for l in nbrs[k]:  # noqa: E741
                if i == k or j == l or i == l:
                    continue
                if max(rdMolTransforms.GetAngleDeg(conf, i, j, k), rdMolTransforms.GetAngleDeg(conf, j, k, l)) > F.LINEAR_DEG:
                    continue
                path = [sym[i], sym[j], sym[k], sym[l]]
                path = min(path, path[::-1], key=lambda p: [rank(s) for s in p])
                torsions.append(("-".join(path), abs(rdMolTransforms.GetDihedralDeg(conf, i, j, k, l))))
    return sorted(angles), sorted(torsions)


def _measured(f: F.GeometryFeatures) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    angles = sorted((F.angle_label(c), float(v)) for c, v in zip(f.angle_code, f.angle_deg))
    torsions = sorted((F.torsion_label(c), float(v)) for c, v in zip(f.torsion_code, f.torsion_deg))
    return angles, torsions


def test_angles_and_torsions_of_a_hand_built_molecule() -> None:
    m = _hydrogen_peroxide(120.0)
    f = F.geometry_features([m])
    pos = m.GetConformer().GetPositions()
    u, v = pos[2] - pos[0], pos[1] - pos[0]  # numpy arithmetic: H1-O1-O2
    expected = math.degrees(math.acos(u @ v / np.linalg.norm(u) / np.linalg.norm(v)))
    assert sorted(F.angle_label(c) for c in f.angle_code) == ["O-O-H", "O-O-H"]
    assert f.angle_deg == pytest.approx([expected, expected], abs=1e-9)
    assert [F.torsion_label(c) for c in f.torsion_code] == ["H-O-O-H"]
    assert f.torsion_deg == pytest.approx([120.0], abs=1e-9)
    assert sorted(F.bond_label(c) for c in f.bond_code) == ["O-H", "O-H", "O-O"]
    assert sorted(f.bond_length) == pytest.approx(sorted([np.linalg.norm(pos[2] - pos[0]), 1.45,
                                                           np.linalg.norm(pos[3] - pos[1])]), abs=1e-12)
    # the signed dihedral follows the IUPAC convention (RDKit's)
    assert F.dihedral_deg(pos[[2]], pos[[0]], pos[[1]], pos[[3]])[0] == pytest.approx(
        rdMolTransforms.GetDihedralDeg(m.GetConformer(), 2, 0, 1, 3), abs=1e-9)


def test_qm9_molecules_match_a_brute_force_enumeration(small_qm9) -> None:
    mols = _mols(small_qm9, range(120, 160))  # rings, carbonyls, nitriles (linear angles) among them
    batch = _measured(F.geometry_features(mols))
    one_by_one = [_brute_force(m) for m in mols]
    angles = sorted(a for pair in one_by_one for a in pair[0])
    torsions = sorted(t for pair in one_by_one for t in pair[1])
    assert [a[0] for a in batch[0]] == [a[0] for a in angles]
    np.testing.assert_allclose([a[1] for a in batch[0]], [a[1] for a in angles], atol=1e-8)
    assert [t[0] for t in batch[1]] == [t[0] for t in torsions]
    np.testing.assert_allclose([t[1] for t in batch[1]], [t[1] for t in torsions], atol=1e-6)


# ----------------------------------------------------------------------------- invariance, QM9 vs QM9


def test_rotated_and_translated_copy_gives_zero(small_qm9) -> None:
    from scipy.spatial.transform import Rotation

    mols = _mols(small_qm9, range(200))
    moved = []
    for t, m in enumerate(mols):
        m2 = Chem.Mol(m)
        conf = m2.GetConformer()
        rot = Rotation.random(random_state=t).as_matrix()
        new = conf.GetPositions() @ rot.T + np.array([3.0, -7.0, 11.0]) * t
        for i, p in enumerate(new):
            conf.SetAtomPosition(i, p.tolist())
        moved.append(m2)
    out = G.compare_geometry(F.geometry_features(moved), F.geometry_features(mols), min_count=1)
    for kind in F.KINDS:
        assert out[f"geometry/{kind}_types_compared"] > 0
        assert out[f"geometry/{kind}_w1"] < 1e-6, kind
    assert out["geometry/atom_type_tv"] == 0 and out["geometry/bond_type_tv"] == 0


def test_qm9_reference_against_a_disjoint_qm9_sample_is_near_zero(qm9) -> None:
    """1,000 molecules of the EDM test split vs 1,000 of the training split (disjoint sets):
    measured 0.00085 Å / 0.47° / 1.64° mean W1 (bond length / angle / torsion), TVs 0.0021 (atoms)
    / 0.014 (bond types). Gaussian noise of 0.05 Å on the positions moves the bond-length W1 > 10-fold."""
    from molgen.data.qm9 import edm_splits

    splits = edm_splits(qm9.num_molecules)
    a = F.geometry_features(_mols(qm9, splits["test"][:1000].numpy()))
    b_mols = _mols(qm9, splits["train"][:1000].numpy())
    out = G.compare_geometry(a, F.geometry_features(b_mols))
    assert out["geometry/bond_length_w1"] < 0.003  # Å
    assert out["geometry/bond_angle_w1"] < 1.0  # degrees
    assert out["geometry/torsion_w1"] < 3.0  # degrees
    assert out["geometry/atom_type_tv"] < 0.01 and out["geometry/bond_type_tv"] < 0.03
    assert out["geometry/bond_length_types_compared"] >= 10
    rng = np.random.default_rng(0)
    noisy = []
    for m in b_mols:
        m2 = Chem.Mol(m)
        conf = m2.GetConformer()
        for i, p in enumerate(conf.GetPositions() + rng.normal(0, 0.05, (m2.GetNumAtoms(), 3))):
            conf.SetAtomPosition(i, p.tolist())
        noisy.append(m2)
    worse = G.compare_geometry(a, F.geometry_features(noisy))
    assert worse["geometry/bond_length_w1"] > 10 * out["geometry/bond_length_w1"]


# ----------------------------------------------------------------------------- bonds from SDF, suite


def _stretched_ethylenes(n: int) -> list[Molecule3D]:
    """Ethylene with a 1.45 Å C=C bond given explicitly: EDM's rule would call that bond single."""
    pos = np.array([[0, 0, 0], [1.45, 0, 0], [-0.55, 0.93, 0], [-0.55, -0.93, 0], [2.0, 0.93, 0], [2.0, -0.93, 0]], float)
    bonds = np.zeros((6, 6), dtype=np.int64)
    for i, j, o in ((0, 1, 2), (0, 2, 1), (0, 3, 1), (1, 4, 1), (1, 5, 1)):
        bonds[i, j] = bonds[j, i] = o
    return [Molecule3D(np.array([C, C, H, H, H, H]), pos + 0.01 * t, bonds=bonds) for t in range(n)]


def test_bonds_from_an_sdf_file_are_used(tmp_path) -> None:
    from molgen.data.readers import read_molecules

    mols = _stretched_ethylenes(3)
    write_sdf(mols, tmp_path / "e.sdf")
    write_xyz(mols, tmp_path / "e.xyz")
    from_sdf = F.geometry_features([r.mol for r in read_molecules(tmp_path / "e.sdf").records])
    assert sorted({F.bond_label(c) for c in from_sdf.bond_code}) == ["C--C", "C-H"]
    assert from_sdf.bond_length[from_sdf.bond_code == _code(6, 6, 2)] == pytest.approx([1.45] * 3)
    from_xyz = F.geometry_features([r.mol for r in read_molecules(tmp_path / "e.xyz").records])
    assert sorted({F.bond_label(c) for c in from_xyz.bond_code}) == ["C-C", "C-H"]  # EDM's rule


def test_benchmark_geometry_group(tmp_path, small_qm9) -> None:
    from molgen.metrics.suite import run_benchmark

    samples = [small_qm9.molecule(i) for i in range(0, 60)]
    for m in samples:
        m.charges, m.properties = None, {}
    write_xyz(samples, tmp_path / "s.xyz")
    with (tmp_path / "s.xyz").open("a") as fh:  # one invalid record (pentavalent carbon) ...
        fh.write("6\nbad\nC 0 0 0\nH 0 0 1.0\nH 0 1.0 0\nH 1.0 0 0\nH 0 0 -1.0\nH 0 -1.0 0\n")
        fh.write("1\nCl\nCl 0 0 0\n")  # ... and one unreadable (unsupported element)
    write_sdf([small_qm9.molecule(i) for i in range(100, 200)], tmp_path / "ref.sdf")
    (tmp_path / "train.smi").write_text("C\nN\n")
    report = run_benchmark(str(tmp_path / "s.xyz"), reference=str(tmp_path / "ref.sdf"), train=str(tmp_path / "train.smi"),
                           metrics="basic,geometry", n_jobs=1, cache_dir=str(tmp_path / "cache"))
    m = report.metrics
    n_valid = round(m["valid"] * 62)  # a few QM9 molecules are invalid under EDM's bonds too
    assert m["n"] == 62 and m["geometry/unmeasured"] == 62 - n_valid >= 2 and m["geometry/molecules"] == n_valid
    assert m["geometry/reference_molecules"] == 100 - sum(
        sanitize(build_mol(small_qm9.molecule(i)))[0] is None for i in range(100, 200))
    for key in ("geometry/bond_length_w1", "geometry/bond_angle_w1", "geometry/torsion_w1",
                "geometry/bond_length_w1_by_type/C-H", "geometry/atom_type_tv", "geometry/bond_type_tv"):
        assert key in m and np.isfinite(m[key]), key
    assert 0 < m["geometry/bond_length_w1"] < 0.05
    assert m["valid_connected"] == pytest.approx(m["valid"])  # QM9 molecules are one fragment each
    assert m["valid_unique_novel"] == pytest.approx(m["valid"] * m["unique"] * m["novel"])
    assert not report.skipped


def test_valid_connected_and_skipped_geometry_for_smiles(tmp_path) -> None:
    from molgen.metrics.suite import run_benchmark

    (tmp_path / "s.smi").write_text("CCO\nCCO.O\nnot_a_smiles\nCN\n")
    (tmp_path / "ref.smi").write_text("CCC\nCCN\nCCO\n")
    (tmp_path / "train.smi").write_text("CN\n")
    kw = dict(reference=str(tmp_path / "ref.smi"), train=str(tmp_path / "train.smi"), n_jobs=1,
              cache_dir=str(tmp_path / "cache"))
    report = run_benchmark(str(tmp_path / "s.smi"), metrics="basic,geometry", **kw)
    m = report.metrics
    assert m["valid_connected"] == pytest.approx(2 / 4)  # CCO.O is valid but two fragments
    # identities CCO, CCO (largest fragment), CN: unique 2/3, novel 1/2 (CN is in train)
    assert m["valid_unique_novel"] == pytest.approx(3 / 4 * 2 / 3 * 1 / 2)
    assert not any(k.startswith("geometry/") for k in m)
    assert "3D input" in report.skipped["geometry"]  # asked for by name: says why not
    report = run_benchmark(str(tmp_path / "s.smi"), metrics="basic", **kw)
    assert "geometry" not in report.skipped


def test_moses_reference_says_why_there_are_no_3d_groups(tmp_path, monkeypatch) -> None:
    from molgen.metrics import suite

    monkeypatch.setattr(suite, "_moses_reference", lambda *args: {})  # MOSES's own metrics: not tested here
    (tmp_path / "s.smi").write_text("CCO\nCN\n")
    report = suite.run_benchmark(str(tmp_path / "s.smi"), reference="moses", metrics="basic,geometry,prdc")
    assert set(report.skipped) == {"geometry", "prdc"} and "MOSES" in report.skipped["geometry"]
    assert not suite.run_benchmark(str(tmp_path / "s.smi"), reference="moses", metrics="all").skipped
