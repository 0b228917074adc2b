"""Precision / recall / density / coverage (k-NN balls): brute force, Gaussian toys, suite wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest

from molgen.metrics.prdc import knn_sq_radii, prdc, prdc_emb

PRDC_KEYS = ("precision_emb", "recall_emb", "density_emb", "coverage_emb")


def _brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The definitions, one point at a time (Kynkäänniemi et al. 2019; Naeem et al. 2020)."""
    dist = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731

    def radius(points, i):
        return sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]

    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, j) for j in range(len(fake))]
    inside = [[dist(x, y) < rr[i] for i, x in enumerate(real)] for y in fake]  # [fake][real]
    return {
        "precision": sum(any(row) for row in inside) / len(fake),
        "recall": sum(any(dist(x, y) < rf[j] for j, y in enumerate(fake)) for x in real) / len(real),
        "density": sum(sum(row) for row in inside) / (k * len(fake)),
        "coverage": sum(any(inside[j][i] for j in range(len(fake))) for i in range(len(real))) / len(real),
    }


def test_knn_radii_brute_force() -> None:
    X = np.random.default_rng(0).normal(size=(9, 3))
    d = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    for k in (1, 3, 8):
        expected = np.sort(d + np.diag([np.inf] * 9), axis=1)[:, k - 1]
        np.testing.assert_allclose(np.sqrt(knn_sq_radii(X, k).numpy()), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="k-NN"):
        knn_sq_radii(X, 9)


@pytest.mark.parametrize("seed", [0, 1])
def test_prdc_matches_the_definitions_on_a_tiny_set(seed) -> None:
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(15, 2)), rng.normal(0.5, 1.2, size=(12, 2))
    for k in (1, 3):
        got, want = prdc(real, fake, k), _brute_prdc(real, fake, k)
        assert got == pytest.approx(want, abs=1e-12), k


def test_gaussian_toys_with_known_answers() -> None:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
    same = prdc(real, fake)
    # one distribution: precision, recall -> 1; density has expectation 1; coverage -> 1 - 2^-5
    assert same["precision"] > 0.95 and same["recall"] > 0.95
    assert abs(same["density"] - 1) < 0.1 and abs(same["coverage"] - (1 - 2**-5)) < 0.04
    far = prdc(real, fake + 50.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # samples on a small part of the real support: faithful but not diverse
    narrow = prdc(real, 0.15 * fake)
    assert narrow["precision"] > 0.99 and narrow["recall"] < 0.1 and narrow["coverage"] < 0.2
    # and the converse: real outliers / a wider fake set lower precision, keep recall
    wide = prdc(real, 3.0 * fake)
    assert wide["precision"] < 0.5 and wide["recall"] > 0.9


def test_prdc_emb_leaves_out_and_counts_unusable_rows(capsys) -> None:
    from molgen.metrics.oracle_metrics import OracleFeatures

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8))
    samples = OracleFeatures(np.zeros((41, 6)), np.vstack([emb, np.full((1, 8), np.nan)]))
    reference = OracleFeatures(np.zeros((50, 6)), rng.normal(size=(50, 8)))
    out = prdc_emb(samples, reference)
    assert out["oracle/unusable"] == 1 and all(0 <= out[k] for k in PRDC_KEYS)
    assert out["precision_emb"] == pytest.approx(prdc(reference.embeddings, emb)["precision"])
    few = prdc_emb(OracleFeatures(np.zeros((3, 6)), emb[:3]), reference)
    assert few == {"oracle/unusable": 0.0} and "k=5" in capsys.readouterr().err


def test_benchmark_prdc_group(tmp_path, qm9_small_source, tiny_oracle, monkeypatch) -> None:
    from molgen.chem.io import write_xyz
    from molgen.data.qm9 import load_qm9
    from molgen.metrics.suite import run_benchmark
    from molgen.oracle import load_oracle

    data = load_qm9(tmp_path / "qm9", source_dir=qm9_small_source)
    mols = [data.molecule(i) for i in range(200)]
    for m in mols:
        m.charges, m.properties = None, {}
    write_xyz(mols[:60], tmp_path / "s.xyz")
    write_xyz(mols[100:], tmp_path / "ref.xyz")
    monkeypatch.setenv("MOLGEN_ORACLE", str(tiny_oracle))
    kw = dict(reference=str(tmp_path / "ref.xyz"), n_jobs=1, cache_dir=str(tmp_path / "cache"))
    report = run_benchmark(str(tmp_path / "s.xyz"), metrics="prdc", **kw)
    assert all(0 <= report.metrics[k] for k in PRDC_KEYS) and report.metrics["oracle/unusable"] == 0
    assert "FD_emb" not in report.metrics and "unique" not in report.metrics  # only the group asked for
    assert report.oracle_version == load_oracle(tiny_oracle).version
    both = run_benchmark(str(tmp_path / "s.xyz"), metrics="embedding,prdc", **kw).metrics
    assert "FD_emb" in both and both["precision_emb"] == report.metrics["precision_emb"]
    # SMILES have no coordinates for the oracle: skipped, and said so when asked for by name
    (tmp_path / "s.smi").write_text("CCO\nCCN\nCCC\n")
    smi = run_benchmark(str(tmp_path / "s.smi"), metrics="basic,prdc", **kw)
    assert not set(PRDC_KEYS) & set(smi.metrics) and "3D input" in smi.skipped["prdc"]
    assert json.loads(json.dumps(smi.as_json()))["skipped/prdc"] == smi.skipped["prdc"]
