"""Target scoring and atom counts given targets, against brute-force computations."""

from __future__ import annotations

import numpy as np
import torch

from molgen.chem.elements import Molecule3D
from molgen.config import BackboneConfig
from molgen.conditional import score_targets
from molgen.data.graphs import compute_stats
from molgen.data.qm9 import edm_splits
from molgen.oracle import ORACLE_PROPERTIES, PropertyOracle


def _oracle() -> PropertyOracle:
    torch.manual_seed(0)
    bcfg = BackboneConfig(num_layers=1, scalar_dim=16, vector_dim=4, edge_dim=8, graph_dim=16, cond_dim=8, num_rbf=8)
    return PropertyOracle(bcfg, ORACLE_PROPERTIES, [0.0] * 6, [1.0] * 6).eval()


def test_score_targets_mae_and_hit_rate_by_hand(qm9) -> None:
    oracle = _oracle()
    mols = [qm9.molecule(i) for i in range(1, 9)] + [qm9.molecule(1)]  # the last one is a duplicate
    mols.append(Molecule3D(atom_types=np.array([1, 0]), positions=np.full((2, 3), np.nan)))  # no structure
    with torch.no_grad():  # one molecule at a time: an independent path from the batched scorer
        preds = [float(oracle(torch.as_tensor(m.atom_types), torch.as_tensor(m.positions, dtype=torch.float32),
                              torch.zeros(m.num_atoms, dtype=torch.long), 1)[0, 1]) for m in mols[:-1]]
    target = float(np.median(preds))
    out = score_targets(mols, {"gap": target}, tol={"gap": 0.05}, oracle=oracle)
    assert abs(out["mae/gap"] - np.mean([abs(p - target) for p in preds])) < 1e-5
    assert out["oracle/unusable"] == 1
    from molgen.chem.build import mol_to_smiles

    seen, hits = set(), 0
    for m, p in zip(mols[:-1], preds):
        s = mol_to_smiles(m)
        hits += s is not None and s not in seen and abs(p - target) <= 0.05
        seen.add(s)
    assert out["hit_rate"] == hits / len(mols)
    assert abs(mols[0].properties["error_gap"] - (preds[0] - target)) < 1e-5


def test_protocol_table_names_the_oracle_version() -> None:
    from molgen.conditional import ProtocolResult

    result = ProtocolResult("gap", {"#Atoms": 0.5, "molgen toy (db)": 0.4}, n=10, unusable=1,
                            details={"model": 0.4, "n_atoms": 0.5}, oracle_version=_oracle().version)
    table = result.table()
    assert f"| (scored by oracle version) | {_oracle().version} |" in table and "| molgen toy (db) | 400 |" in table
    assert "oracle version" not in ProtocolResult("gap", {"#Atoms": 0.5}, n=1, unusable=0).table()


def test_atom_counts_given_target_match_brute_force(qm9) -> None:
    idx = edm_splits(qm9.num_molecules)["db"]
    stats = compute_stats(qm9, idx, ["gap"])
    edges = np.array(stats.joint_edges["gap"])
    target = 6.5
    b = np.searchsorted(edges, target, side="left") - 1  # bins are (edge_b, edge_b+1]
    gap, n = qm9.property("gap")[idx].double().numpy(), qm9.n_atoms[idx].numpy()
    in_bin = (gap > edges[b]) & (gap <= edges[b + 1])
    expected = np.bincount(n[in_bin], minlength=stats.max_atoms + 1) / in_bin.sum()
    got = stats.n_atoms_probs_given({"gap": target}).numpy()
    assert np.abs(got - expected).max() < 1e-9
    assert np.allclose(stats.n_atoms_probs_given({}).numpy(), np.array(stats.n_atoms_hist) / sum(stats.n_atoms_hist))


def test_several_oracles_score_the_same_samples_as_one_at_a_time() -> None:
    """``edm_conditional_oracles`` samples once: each oracle's rows equal a separate single-oracle run
    with the same seed, and the rows that need no oracle (#Atoms, unscored count) are shared."""
    from molgen.conditional import edm_conditional, edm_conditional_oracles
    from molgen.generate import load_model

    model = load_model(pretrained="smiles-ar-gap", device="cpu")
    first = _oracle()
    torch.manual_seed(1)
    second = PropertyOracle(BackboneConfig(num_layers=1, scalar_dim=16, vector_dim=4, edge_dim=8, graph_dim=16,
                                           cond_dim=8, num_rbf=8), ORACLE_PROPERTIES, [0.0] * 6, [1.0] * 6).eval()
    assert first.version != second.version
    both = edm_conditional_oracles(model, "gap", [first, second], n=6, seed=4, progress=False)
    for oracle, multi in zip((first, second), both):
        single = edm_conditional(model, "gap", n=6, seed=4, oracle=oracle, progress=False)
        assert multi.oracle_version == oracle.version == single.oracle_version
        assert multi.unusable == single.unusable
        for key, value in single.details.items():
            assert abs(multi.details[key] - value) < 1e-9, key
    assert both[0].details["n_atoms"] == both[1].details["n_atoms"]
    assert both[0].details["model"] != both[1].details["model"]
