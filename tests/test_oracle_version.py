"""The versioned yardstick: the oracle's version follows its weights, is reported with every metric
that depends on it, and keys the cached reference embeddings."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from molgen.config import BackboneConfig
from molgen.oracle import ORACLE_PROPERTIES, ORACLE_VERSION_TAG, PropertyOracle, load_oracle
from molgen.safe_load import weights_digest

BCFG = BackboneConfig(num_layers=1, scalar_dim=16, vector_dim=4, edge_dim=8, graph_dim=16, cond_dim=8, num_rbf=8)


def _oracle(seed: int = 0) -> PropertyOracle:
    torch.manual_seed(seed)
    return PropertyOracle(BCFG, ORACLE_PROPERTIES, [0.0] * 6, [1.0] * 6).eval()


@pytest.fixture(scope="module")
def small_qm9(tmp_path_factory, qm9_small_source):
    """The 200 first QM9 molecules (fast to parse)."""
    from molgen.data.qm9 import load_qm9

    return load_qm9(tmp_path_factory.mktemp("small_qm9_cache"), source_dir=qm9_small_source)


# ------------------------------------------------------------------------------ the version


def test_version_is_the_weights_digest_and_survives_save_and_load(tmp_path) -> None:
    oracle = _oracle()
    version = oracle.version
    assert re.fullmatch(r"[0-9a-f]{12}", version)
    assert version == weights_digest({"model": oracle.state_dict()})[:12]
    path = oracle.save(tmp_path / "o.pt")
    loaded = load_oracle(path)
    assert loaded.version == version
    assert loaded.meta["integrity"]["sha256"].startswith(version)  # the file's own digest
    # a file written before the digest existed gets the same version (computed from the weights)
    payload = torch.load(path, weights_only=True)
    del payload["integrity"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_oracle(tmp_path / "old.pt").version == version


def test_version_changes_when_the_weights_do(tmp_path) -> None:
    oracle = _oracle()
    before = oracle.version
    assert _oracle(seed=0).version == before  # same weights, same version
    assert _oracle(seed=1).version != before  # other weights
    with torch.no_grad():
        next(oracle.head.parameters()).view(-1)[0] += 1e-6  # one weight, barely
    assert oracle.version != before
    changed = oracle.version
    with torch.no_grad():
        oracle.mean[0] += 1.0  # the de-normalization buffers are weights too
    assert oracle.version not in (before, changed)
    assert load_oracle(oracle.save(tmp_path / "o.pt")).version == oracle.version


def test_shipped_oracle_has_a_version() -> None:
    from molgen.oracle import DEFAULT_ORACLE

    if not DEFAULT_ORACLE.is_file():
        pytest.skip("no shipped oracle weights")
    oracle = load_oracle(DEFAULT_ORACLE)
    assert re.fullmatch(r"[0-9a-f]{12}", oracle.version)
    if "integrity" in oracle.meta:
        assert oracle.meta["integrity"]["sha256"].startswith(oracle.version)


# ------------------------------------------------------------------------------ the reference cache


def test_reference_cache_of_another_version_is_not_reused(tmp_path, small_qm9, monkeypatch) -> None:
    from molgen.metrics import oracle_metrics as OM

    a, b = _oracle(seed=0), _oracle(seed=1)
    assert a.version != b.version
    calls: list[str] = []
    real = OM.oracle_features

    def counting(oracle, mols):
        calls.append(oracle.version)
        return real(oracle, mols)

    monkeypatch.setattr(OM, "oracle_features", counting)
    feats_a = OM.qm9_reference_features(a, None, small_qm9, size=15, cache_dir=tmp_path)
    OM.qm9_reference_features(a, None, small_qm9, size=15, cache_dir=tmp_path)
    assert calls == [a.version]  # cached for a
    folder = tmp_path / "oracle_reference"
    (path_a,) = folder.glob("qm9_test-*.npz")
    assert a.version in path_a.name
    with np.load(path_a) as z:
        assert str(z["oracle_version"]) == a.version

    feats_b = OM.qm9_reference_features(b, None, small_qm9, size=15, cache_dir=tmp_path)
    assert calls == [a.version, b.version]  # b did not reuse a's cache
    assert not np.allclose(feats_a.embeddings, feats_b.embeddings)
    assert len(list(folder.glob("qm9_test-*.npz"))) == 2

    # a file holding a's features under b's name (copied, renamed) is refused, then overwritten
    path_b = OM.reference_cache_path(b, small_qm9, OM.qm9_reference_rows(small_qm9, 15), tmp_path)
    assert path_b.is_file() and path_b != path_a
    path_b.write_bytes(path_a.read_bytes())
    again_b = OM.qm9_reference_features(b, None, small_qm9, size=15, cache_dir=tmp_path)
    assert calls == [a.version, b.version, b.version]
    np.testing.assert_allclose(again_b.embeddings, feats_b.embeddings)
    with np.load(path_b) as z:
        assert str(z["oracle_version"]) == b.version

    # a cache written before versions were recorded (no oracle_version entry) is not trusted either
    np.savez(path_b, preds=feats_a.preds, embeddings=feats_a.embeddings)
    OM.qm9_reference_features(b, None, small_qm9, size=15, cache_dir=tmp_path)
    assert calls[-1] == b.version and len(calls) == 4

    # the same weights in another file reuse the cache (the key is the version, not the file bytes)
    OM.qm9_reference_features(load_oracle(a.save(tmp_path / "copy_of_a.pt")), None, small_qm9, size=15,
                              cache_dir=tmp_path)
    assert len(calls) == 4


# ------------------------------------------------------------------------------ where it is reported


def test_generate_prints_the_oracle_version(tmp_path, small_qm9, monkeypatch, capsys) -> None:
    from molgen import generate as G

    oracle_path = _oracle().save(tmp_path / "o.pt")
    monkeypatch.setenv("MOLGEN_ORACLE", str(oracle_path))
    mols = [small_qm9.molecule(i) for i in range(1, 5)]
    for m in mols:
        m.properties = {}
    fake = SimpleNamespace(stats=SimpleNamespace(properties=[], low=None), properties=["gap"],
                           sample=lambda n, **kwargs: mols[:n])
    monkeypatch.setattr(G, "load_model", lambda *args, **kwargs: fake)
    report = G.generate_molecules(run_id=None, checkpoint="x", n=4, targets=["gap=6.5eV"], n_atoms=9,
                                  guidance=None, steps=None, seed=0, device="cpu", tracking_uri=None,
                                  out=str(tmp_path / "x.sdf"))
    assert "mae/gap" in report and "hit_rate" in report
    out = capsys.readouterr().out
    assert f"oracle version {load_oracle(oracle_path).version}" in out


def test_evaluate_tags_the_run_with_the_oracle_version(tmp_path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    from molgen import conditional as C
    from molgen import evaluate as EV

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    model = SimpleNamespace(name="toy")
    monkeypatch.setattr(EV, "_open_target", lambda run_id, pretrained, tracking_uri, device:
                        EV._Target(model, tracking_uri, None, "toy"))
    result = C.ProtocolResult("gap", {"#Atoms": 0.5}, n=3, unusable=0, details={"model": 0.4},
                              oracle_version="0123456789ab")
    monkeypatch.setattr(C, "edm_conditional", lambda *args, **kwargs: result)
    _, run_id = EV.evaluate_conditional_run(None, "gap", n=3, steps=None, guidance=None, seed=0,
                                            tracking_uri=uri, pretrained="toy")
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.tags[ORACLE_VERSION_TAG] == "0123456789ab"
    assert run.data.metrics["cond/gap/model"] == pytest.approx(0.4)
    assert "| (scored by oracle version) | 0123456789ab |" in result.table()
