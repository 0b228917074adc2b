"""MOSES metrics and FCD: pinned values on tiny inputs, each checked by an independent computation
(closed forms, brute-force RDKit loops, hand counts), plus the cheap metrics on MOSES's published
CharRNN sample file. The full reproduction (FCD, SNN against the 176k test sets, ...) takes ~3 min
and lives in ``scripts/reproduce_moses.py``.
"""

from __future__ import annotations

import csv
import importlib.util
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import QED, rdFingerprintGenerator

from molgen.errors import MolgenError
from molgen.metrics import moses as M
from molgen.metrics.fcd import chemnet_activations, encode, fcd, frechet_distance

HAS_MOLSETS = importlib.util.find_spec("moses") is not None
needs_molsets = pytest.mark.skipif(not HAS_MOLSETS, reason="pip install --no-deps molsets")
BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "moses"

# Drug-like molecules of varied size (MOSES-style canonical SMILES).
SMILES = [
    "CC(C#N)(NC(=O)CCn1cnc2ccccc2c1=O)C1CC1",
    "O=C(Nc1ccc2c(c1)COC2)NC1CCCOc2ccccc2C1",
    "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1",
    "CC(C)(C)C(=O)C(Oc1ccc(Cl)cc1)n1ccnc1",
    "COc1ccccc1",
    "c1ccc(-c2ccccc2)cc1",
    "O=C(NC1CC1)c1ccccc1",
    "CC(=O)Nc1ccc(O)cc1",
    "Cc1ccc(S(=O)(=O)N2CCCC2)cc1",
    "CN1CCN(c2ccc(C(F)(F)F)cc2)CC1",
    "O=C(O)c1ccccc1O",
    "CCOC(=O)c1ccc(N)cc1",
    "Brc1ccc2[nH]ccc2c1",
    "CC1=CC(=O)c2ccccc2C1=O",
    "N#Cc1ccc(CN2CCOCC2)cc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "COc1cc2c(cc1OC)CC(=O)N2",
    "O=c1[nH]c(=O)n(C2CCCCC2)c(=O)[nH]1",
    "Cc1nc2ccccc2n1Cc1ccccc1",
    "CCN(CC)C(=O)c1cccnc1",
    "Clc1ccc(Cn2ccnc2)cc1",
    "CC(=O)OC1CCC2(C)C(CCC3C2CCC2(C)C3CCC2=O)C1",
    "C",
]


def _rdkit_fps(smiles: list[str]) -> list:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    return [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in smiles]


def _packed(bit_sets: list[set[int]]) -> np.ndarray:
    bits = np.zeros((len(bit_sets), M.FP_BITS), np.uint8)
    for i, s in enumerate(bit_sets):
        bits[i, sorted(s)] = 1
    return M.pack_fingerprints(bits)


@pytest.fixture(params=["numba", "torch"])
def kernel(request, monkeypatch) -> str:
    """Run a test with the numba popcount kernels and with the torch matmul fallback."""
    if request.param == "numba":
        if M._numba_kernels() is None:
            pytest.skip("numba is not installed")
    else:
        monkeypatch.setattr(M, "_numba_kernels", lambda: None)
    return request.param


# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_1d_closed_form() -> None:
    # N(1, 4) vs N(3, 9): (1-3)^2 + (2-3)^2 = 5
    fd = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
    assert fd == pytest.approx(5.0, abs=1e-12)


def test_frechet_distance_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2)
    fd = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert fd == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_singular_and_general() -> None:
    rng = np.random.default_rng(1)
    d = 5
    # Rank-1 S1 = v v^T against S2 = I: Tr sqrt(S1 S2) = |v|.
    v = rng.normal(size=d)
    mu = rng.normal(size=d)
    expected = mu @ mu + v @ v + d - 2 * np.linalg.norm(v)
    # (the sqrt of round-off-size eigenvalues of the singular matrix costs ~1e-8 each)
    fd = frechet_distance(mu, np.outer(v, v), np.zeros(d), np.eye(d))
    assert fd == pytest.approx(expected, abs=1e-6)
    # Two general SPD matrices: against the textbook scipy.linalg.sqrtm formula.
    from scipy.linalg import sqrtm

    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    textbook = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(textbook, rel=1e-9)
    assert frechet_distance(m2, s2, m1, s1) == pytest.approx(textbook, rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_chemnet_encoding_matches_fcd_package() -> None:
    from fcd.utils import SmilesDataset

    smiles = ["CCCl", "c1ccc(Br)cc1[Si](C)(C)C", "C%12CC%12", "O=C(O)[C@@H](N)Cc1c[nH]cn1"]
    ours = encode(smiles)
    ds = SmilesDataset(smiles)
    assert np.array_equal(ours, np.stack([ds[i] for i in range(len(smiles))]).astype(np.float32))
    long = encode(["C" * 400])  # truncated like fcd_torch: 349 tokens + end token
    assert long.shape == (1, 350, 35) and long[0, 349, 34] > 0 and long[0, :349, 0].all()


def test_fcd_of_a_set_with_itself_is_zero() -> None:
    act = chemnet_activations(SMILES[:8])
    assert act.shape == (8, 512) and np.isfinite(act).all()
    # 8 samples in 512-d: a rank-7 covariance, whose ~505 zero eigenvalues leave ~1e-7 each
    assert fcd(SMILES[:8], SMILES[:8]) == pytest.approx(0.0, abs=1e-4)
    assert fcd(SMILES[:8], SMILES[8:16]) > 1.0


# ----------------------------------------------------------------------------- similarity metrics


def test_snn_matches_bulk_tanimoto(kernel: str) -> None:
    gen, ref = SMILES[:7], SMILES[7:]  # 7 queries: not a multiple of the kernel's block of 4
    ref_fps = _rdkit_fps(ref)
    brute = [max(DataStructs.BulkTanimotoSimilarity(fp, ref_fps)) for fp in _rdkit_fps(gen)]
    ours = M.max_tanimoto(M.fingerprints(gen), M.fingerprints(ref))
    np.testing.assert_allclose(ours, brute, rtol=1e-6)
    snn = M.snn(M.fingerprints(gen), M.fingerprints(ref))
    assert snn == pytest.approx(np.mean(brute), rel=1e-6)
    assert M.snn(M.fingerprints(gen), M.fingerprints(gen)) == pytest.approx(1.0)


def test_internal_diversity_by_hand(kernel: str) -> None:
    # a = {0, 1}, b = {1, 2}: T(a,b) = 1/3; all ordered pairs incl. self: mean T = (2 + 2/3) / 4.
    fps = _packed([{0, 1}, {1, 2}])
    intdiv, intdiv2 = M.internal_diversities(fps)
    assert intdiv == pytest.approx(1 - 2 / 3)
    assert intdiv2 == pytest.approx(1 - math.sqrt((1 + 1 / 9) / 2))  # per row: sqrt(mean T^2)
    assert M.internal_diversity(fps, p=2) == pytest.approx(intdiv2)
    # Empty fingerprints: 0/0 counts as similarity 1 (MOSES's nan -> 1).
    assert M.internal_diversities(_packed([set(), set()]))[0] == pytest.approx(0.0)
    assert M.max_tanimoto(_packed([set()]), _packed([{5}, set()]))[0] == pytest.approx(1.0)


def test_internal_diversity_matches_bulk_tanimoto(kernel: str) -> None:
    fps = _rdkit_fps(SMILES)
    sims = np.array([DataStructs.BulkTanimotoSimilarity(fp, fps) for fp in fps])
    ours = M.internal_diversities(M.fingerprints(SMILES))
    tol = 1e-12 if kernel == "numba" else 1e-6  # the torch fallback forms T in float32, like MOSES
    assert ours[0] == pytest.approx(1 - sims.mean(), rel=tol)
    assert ours[1] == pytest.approx(1 - np.sqrt((sims**2).mean(1)).mean(), rel=tol)


def test_fingerprints_equal_legacy_morgan_bits() -> None:
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(SMILES[0])
    with M.quiet_rdkit():  # the legacy function is deprecated (that's what MOSES called)
        legacy = np.array(AllChem.GetMorganFingerprintAsBitVect(mol, 2, nBits=1024), np.uint8)
    assert np.array_equal(M.morgan_bits(mol), legacy)


def test_fragments_scaffolds_and_cosine() -> None:
    assert sorted(M.fragments(Chem.MolFromSmiles("COc1ccccc1"))) == ["[16*]c1ccccc1", "[3*]OC"]
    gen_frag = M.compute_fragments(["COc1ccccc1", "c1ccc(-c2ccccc2)cc1"])
    assert gen_frag == Counter({"[16*]c1ccccc1": 3, "[3*]OC": 1})
    ref_frag = M.compute_fragments(["COc1ccccc1"])
    assert M.cos_similarity(ref_frag, gen_frag) == pytest.approx(4 / math.sqrt(10 * 2))

    biphenyl, amide = "c1ccc(-c2ccccc2)cc1", "O=C(NC1CC1)c1ccccc1"
    gen_scaf = M.compute_scaffolds([biphenyl, biphenyl, amide, "COc1ccccc1"])  # benzene: 1 ring
    assert gen_scaf == Counter({biphenyl: 2, amide: 1})
    ref_scaf = M.compute_scaffolds([biphenyl] + [amide] * 3)
    assert M.cos_similarity(ref_scaf, gen_scaf) == pytest.approx(5 / math.sqrt(5 * 10))
    assert M.cos_similarity(Counter({"a": 1}), Counter({"b": 2})) == 0.0
    assert math.isnan(M.cos_similarity(Counter(), gen_scaf))


# ----------------------------------------------------------------------------- filters, properties


@needs_molsets
@pytest.mark.parametrize(
    ("smiles", "passes"),
    [
        ("C[N+](C)(C)C", False),  # charged
        ("C1CCCCCCC1", False),  # ring of 8
        ("C1CCCCCC1", True),  # ring of 7 is fine
        ("CCP", False),  # P is not an allowed atom
        ("CC=O", False),  # MCF7: aldehyde
        ("c1ccccc1N=Nc1ccccc1", False),  # MCF11: acyclic N=N
        ("S=C1SC(=Cc2ccccc2)C(=O)N1", False),  # PAINS ene_rhod
        ("CC(=O)Nc1ccc(O)cc1", True),
        ("O=C(NC1CC1)c1ccccc1", True),
    ],
)
def test_filters_hand_picked(smiles: str, passes: bool) -> None:
    assert M.passes_filters(smiles) is passes
    assert M.filter_flags([smiles]).tolist() == [passes]


@needs_molsets
def test_pains_alert_is_a_pains_pattern() -> None:
    from molgen.metrics.references import moses_filter_smarts

    smarts = moses_filter_smarts()
    assert len(smarts) == 22 + 480  # MCF1..22 then the 480 Wehi PAINS
    mol = Chem.AddHs(Chem.MolFromSmiles("S=C1SC(=Cc2ccccc2)C(=O)N1"))
    hits = [i for i, s in enumerate(smarts) if mol.HasSubstructMatch(Chem.MolFromSmarts(s))]
    assert hits and min(hits) >= 22


@needs_molsets
def test_batched_filters_equal_per_molecule_filters() -> None:
    smiles = SMILES + ["CC=O", "C1CCCCCCC1", "S=C1SC(=Cc2ccccc2)C(=O)N1", "not a smiles"]
    flags = M.filter_flags(smiles, num_threads=2)
    assert flags.tolist() == [M.passes_filters(s) for s in smiles]
    assert M.fraction_passes_filters(smiles) == pytest.approx(flags.mean())


def test_properties_and_wasserstein() -> None:
    mols = [Chem.MolFromSmiles(s) for s in SMILES]
    for mol in mols:  # QED reusing logP equals RDKit's QED
        assert M.qed_reusing_logp(mol, M.logp(mol)) == pytest.approx(QED.qed(mol), abs=1e-12)
    assert M.weight(Chem.MolFromSmiles("O")) == pytest.approx(18.015, abs=1e-3)
    assert 1.0 <= M.sa(mols[0]) <= 10.0
    assert M.wasserstein([0.0, 1.0], [0.0, 1.0]) == 0.0
    assert M.wasserstein([0.0], [2.5]) == pytest.approx(2.5)


def test_valid_unique_novelty() -> None:
    smiles = ["CCO", "OCC", "C(C)O", "c1ccccc1", "C1CC", "", "CC(C)(C)(C)C"]  # 3 invalid
    assert M.fraction_valid(smiles) == pytest.approx(4 / 7)
    valid = M.remove_invalid(smiles)
    assert valid == ["CCO", "CCO", "CCO", "c1ccccc1"]
    assert M.fraction_unique(valid) == pytest.approx(2 / 4)
    assert M.fraction_unique(valid, 2) == pytest.approx(1 / 2)
    with pytest.warns(UserWarning):
        assert M.fraction_unique(valid, 10) == pytest.approx(2 / 4)
    with pytest.raises(ValueError):
        M.fraction_unique(["CCO", "C1CC"])
    assert M.novelty(valid, {"CCO"}) == pytest.approx(1 / 2)


# ----------------------------------------------------------------------------- references, suite


@needs_molsets
def test_moses_reference_files() -> None:
    from molgen.metrics.references import load_moses_split, moses_fcd_stats

    assert len(load_moses_split("test")) == 176_074
    stats = moses_fcd_stats("test_scaffolds")
    assert stats.mu.shape == (512,) and stats.sigma.shape == (512, 512)


def test_moses_reference_without_molsets(monkeypatch) -> None:
    from molgen.metrics import references

    real = importlib.util.find_spec
    monkeypatch.setattr(references.importlib.util, "find_spec",
                        lambda name, *a: None if name == "moses" else real(name, *a))
    with pytest.raises(MolgenError, match="pip install --no-deps molsets"):
        references.moses_reference()


def test_reference_stats_cache_round_trip(tmp_path) -> None:
    from molgen.metrics.moses_suite import compute_features, reference_stats, score_against

    ref = reference_stats(SMILES[8:], name="tiny", with_fcd=False, cache_dir=tmp_path)
    again = reference_stats(SMILES[8:], name="tiny", with_fcd=False, cache_dir=tmp_path)
    (cached,) = (tmp_path / "moses_reference").glob("tiny-*.npz")
    assert np.array_equal(ref.fps, again.fps) and ref.fragments == again.fragments
    assert ref.scaffolds == again.scaffolds and ref.fcd is None
    for name in M.PROPERTY_NAMES:
        assert np.array_equal(ref.properties[name], again.properties[name])
    cached.write_bytes(b"truncated")  # a corrupt cache is rebuilt, not an error
    rebuilt = reference_stats(SMILES[8:], name="tiny", with_fcd=False, cache_dir=tmp_path)
    assert rebuilt.fragments == ref.fragments and cached.stat().st_size > 1000
    gen = compute_features(SMILES[:8] + ["invalid("], filters=False)
    assert gen.valid == pytest.approx(8 / 9)
    scores = score_against(gen, again)
    expected_snn = M.snn(M.fingerprints(SMILES[:8]), M.fingerprints(SMILES[8:]))
    assert scores["SNN"] == pytest.approx(expected_snn)
    assert scores["Frag"] == pytest.approx(
        M.cos_similarity(M.compute_fragments(SMILES[8:]), M.compute_fragments(SMILES[:8]))
    )


def _published(stem: str) -> tuple[list[str], dict[str, float]]:
    with open(BENCH / f"{stem}.csv", newline="") as fh:
        smiles = [r[0] if r else "" for r in list(csv.reader(fh))[1:]]
    with open(BENCH / f"metrics_{stem}.csv", newline="") as fh:
        return smiles, {r[0]: float(r[1]) for r in csv.reader(fh) if r}


@pytest.mark.skipif(not (BENCH / "char_rnn_1.csv").is_file(), reason="shared/benchmarks missing")
def test_reproduces_published_cheap_metrics_char_rnn() -> None:
    """valid, unique@1k/10k, IntDiv, IntDiv2 on the full published CharRNN file (~15 s)."""
    smiles, published = _published("char_rnn_1")
    with M.quiet_rdkit():
        mols = [M.get_mol(s) for s in smiles]
    valid = [Chem.MolToSmiles(m) for m in mols if m is not None]
    assert len(valid) / len(smiles) == pytest.approx(published["valid"], abs=1e-6)
    assert M.fraction_unique(valid, 1000) == pytest.approx(published["unique@1000"], abs=1e-6)
    assert M.fraction_unique(valid, 10000) == pytest.approx(published["unique@10000"], abs=1e-6)
    if M._numba_kernels() is None:  # the torch fallback needs ~30 s for 30k x 30k pairs
        return
    bits = np.array([M.morgan_bits(m) for m in mols if m is not None])
    intdiv, intdiv2 = M.internal_diversities(M.pack_fingerprints(bits))
    assert intdiv == pytest.approx(published["IntDiv"], abs=1e-5)
    assert intdiv2 == pytest.approx(published["IntDiv2"], abs=1e-5)
