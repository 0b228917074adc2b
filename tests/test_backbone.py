"""The shared backbone: E(3) equivariance checked with e3nn's tester and on a real QM9 molecule."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from molgen.config import BackboneConfig
from molgen.nn.backbone import EquivariantBackbone
from molgen.nn.graph import full_edge_index

CFG = BackboneConfig(num_layers=2, scalar_dim=16, vector_dim=4, edge_dim=8, graph_dim=8, cond_dim=8, num_rbf=8)


def _model(edge_attr_dim: int = 0) -> EquivariantBackbone:
    torch.manual_seed(0)
    model = EquivariantBackbone(6, CFG, edge_attr_dim=edge_attr_dim).double()
    for layer in model.layers:  # make the (zero-initialized) FiLM conditioning non-trivial
        torch.nn.init.normal_(layer.film.weight, std=0.5)
    return model


def test_full_edge_index_matches_brute_force() -> None:
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    edges = set(map(tuple, full_edge_index(batch).T.tolist()))
    expected = {(j, i) for i in range(9) for j in range(9) if i != j and batch[i] == batch[j]}
    assert edges == expected


def test_assert_equivariant_e3nn() -> None:
    model = _model()
    batch = torch.tensor([0] * 5 + [1] * 4)
    cond = torch.randn(2, CFG.cond_dim, dtype=torch.float64)

    def f(h: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(h, pos, batch, cond)
        return out.scalars, out.vectors.reshape(out.vectors.shape[0], -1)

    irreps_in = [o3.Irreps("6x0e"), o3.Irreps("1x1o")]
    irreps_out = [o3.Irreps(f"{CFG.scalar_dim}x0e"), o3.Irreps(f"{CFG.vector_dim}x1o")]
    errors = assert_equivariant(
        f, args_in=[torch.randn(9, 6, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)],
        irreps_in=irreps_in, irreps_out=irreps_out, do_parity=True, do_translation=True,
    )
    assert max(float(e.abs().max()) for e in errors.values()) < 1e-9


@pytest.mark.parametrize("reflect", [False, True])
def test_qm9_molecule_rotation_reflection_translation_permutation(qm9, reflect: bool) -> None:
    model = _model(edge_attr_dim=2)
    mols = [qm9.molecule(i) for i in (1000, 2000)]
    h = torch.cat([torch.nn.functional.one_hot(torch.as_tensor(m.atom_types), 6) for m in mols]).double()
    pos = torch.cat([torch.as_tensor(m.positions) for m in mols]).double()
    batch = torch.cat([torch.full((m.num_atoms,), k) for k, m in enumerate(mols)])
    cond = torch.randn(2, CFG.cond_dim, dtype=torch.float64)
    edge_index = full_edge_index(batch)
    edge_attr = torch.randn(edge_index.shape[1], 2, dtype=torch.float64)
    out = model(h, pos, batch, cond, edge_index=edge_index, edge_attr=edge_attr, edge_features=True)

    rot = o3.rand_matrix(dtype=torch.float64) * (-1 if reflect else 1)
    shift = torch.randn(3, dtype=torch.float64) * 5
    # permute atoms within each molecule (the batch vector stays sorted)
    n0 = mols[0].num_atoms
    perm = torch.cat([torch.randperm(n0), n0 + torch.randperm(mols[1].num_atoms)])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    new_edge_index = inv[edge_index]
    out2 = model(h[perm], (pos @ rot.T + shift)[perm], batch, cond, edge_index=new_edge_index, edge_attr=edge_attr,
                 edge_features=True)

    assert torch.allclose(out2.scalars, out.scalars[perm], atol=1e-9)
    assert torch.allclose(out2.vectors, (out.vectors @ rot.T)[perm], atol=1e-9)
    assert torch.allclose(out2.edge_features, out.edge_features, atol=1e-9)  # same edges, relabelled
    assert torch.allclose(out2.graph, out.graph, atol=1e-9)
    assert model(h, pos, batch, cond, edge_index=edge_index, edge_attr=edge_attr).edge_features is None  # opt-in


def test_condition_changes_output() -> None:
    model = _model()
    batch = torch.tensor([0] * 4)
    h, pos = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    a = model(h, pos, batch, torch.zeros(1, CFG.cond_dim, dtype=torch.float64)).scalars
    b = model(h, pos, batch, torch.ones(1, CFG.cond_dim, dtype=torch.float64)).scalars
    assert not torch.allclose(a, b)


def test_compiled_layers_match_eager_outputs_and_gradients() -> None:
    """train.compile: the in-place compiled backbone gives the eager outputs and gradients, same state_dict."""
    from molgen.nn.backbone import compile_backbones

    model = _model().float()
    compiled = _model().float()
    assert compile_backbones(torch.nn.ModuleDict({"net": compiled})) == CFG.num_layers
    assert list(compiled.state_dict()) == list(model.state_dict())  # checkpoints are unchanged
    for sizes in ([5, 4], [7, 3, 6]):  # two shapes: one dynamic graph serves both
        batch = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
        h, pos = torch.randn(len(batch), 6), torch.randn(len(batch), 3)
        cond = torch.randn(len(sizes), CFG.cond_dim)
        outs = []
        for m in (model, compiled):
            m.zero_grad()
            out = m(h, pos, batch, cond)
            (out.scalars.pow(2).sum() + out.vectors.pow(2).sum()).backward()
            outs.append((out.scalars.detach(), out.vectors.detach(),
                         [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        (s0, v0, g0), (s1, v1, g1) = outs
        assert torch.allclose(s0, s1, atol=1e-4) and torch.allclose(v0, v1, atol=1e-4)
        assert len(g0) == len(g1) and all(torch.allclose(a, b, atol=1e-3, rtol=1e-3) for a, b in zip(g0, g1))
