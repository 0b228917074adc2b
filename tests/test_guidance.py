"""Guidance / product-of-experts weights against the formulas written out by hand."""

from __future__ import annotations

import pytest
import torch

from molgen.errors import MolgenError
from molgen.sampling.guidance import guidance_experts


def _combine(experts, f):
    return sum(c * f(y, m) for y, m, c in experts)


@pytest.mark.parametrize("w", [0.0, 0.7, 3.0])
def test_weights_reproduce_joint_and_product_formulas(w: float) -> None:
    torch.manual_seed(0)
    y = torch.randn(4, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    a = torch.randn(3)
    # a stand-in "network": any function of the given labels; the empty label set gives f0
    f = lambda yy, mm: (yy * a).sum(1) + 0.3 * mm.float().sum(1) ** 2 + 1.0  # noqa: E731
    f0 = f(torch.zeros_like(y), torch.zeros_like(mask))
    joint = _combine(guidance_experts(y, mask, w, "joint"), f)
    assert torch.allclose(joint, (1 + w) * f(y * mask, mask) - w * f0)
    prod = _combine(guidance_experts(y, mask, w, "product"), f)
    expected = torch.empty(4)
    for i in range(4):
        given = mask[i].nonzero().flatten().tolist()
        total = -(len(given) - 1) * f0[i] if given else f0[i]
        for j in given:
            m = torch.zeros(1, 3, dtype=torch.bool)
            m[0, j] = True
            total = total + (1 + w) * f(y[i:i + 1] * m, m)[0] - w * f0[i]
        expected[i] = total
    assert torch.allclose(prod, expected, atol=1e-6)
    for rule in ("joint", "product"):  # weights sum to one, so per-row constants cancel
        assert torch.allclose(sum(c for _, _, c in guidance_experts(y, mask, w, rule)), torch.ones(4))


def test_unguided_joint_is_one_call_and_bad_rule_is_an_error() -> None:
    y, mask = torch.randn(2, 2), torch.ones(2, 2, dtype=torch.bool)
    assert len(guidance_experts(y, mask, 0.0, "joint")) == 1
    with pytest.raises(MolgenError, match="composition must be one of"):
        guidance_experts(y, mask, 0.0, "sum")


def _toy_field(a: torch.Tensor):
    """A per-atom "network" whose outputs depend non-linearly on the labels and on the molecule."""

    def field(zx, zh, t, batch_index, num_graphs, y, y_mask):
        g = torch.tanh(y @ a) + 0.5 * y_mask.sum(1, keepdim=True) ** 2 + t[:, None]  # [B, 1]
        return zx * g[batch_index], zh + g[batch_index] ** 2

    return field


@pytest.mark.parametrize("w", [0.0, 1.5])
def test_point_cloud_guidance_matches_per_molecule_experts(w: float) -> None:
    """``guided`` (one batched call of K label sets) = each molecule's experts evaluated one by one."""
    from molgen.models.pointcloud import guided

    torch.manual_seed(1)
    counts = torch.tensor([3, 5, 2])
    B, N = 3, int(counts.sum())
    batch_index = torch.repeat_interleave(torch.arange(B), counts)
    zx, zh, t = torch.randn(N, 3), torch.randn(N, 4), torch.rand(B)
    y = torch.randn(B, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    field = _toy_field(torch.randn(2, 1))
    for rule in ("joint", "product"):
        gx, gh = guided(field, zx, zh, t, batch_index, B, y * mask, mask, w, rule)
        for i in range(B):
            sel = batch_index == i
            one = torch.zeros(int(counts[i]), dtype=torch.long)
            ex, eh = torch.zeros_like(zx[sel]), torch.zeros_like(zh[sel])
            for y_k, m_k, c_k in guidance_experts(y[i:i + 1] * mask[i:i + 1], mask[i:i + 1], w, rule):
                fx, fh = field(zx[sel], zh[sel], t[i:i + 1], one, 1, y_k, m_k)
                ex, eh = ex + c_k * fx, eh + c_k * fh
            assert torch.allclose(gx[sel], ex, atol=1e-5) and torch.allclose(gh[sel], eh, atol=1e-5)
    # one property: the product of experts is classifier-free guidance
    one_prop = torch.tensor([[1.0, 0.0]] * B)
    a = guided(field, zx, zh, t, batch_index, B, y * one_prop, one_prop, w, "product")
    b = guided(field, zx, zh, t, batch_index, B, y * one_prop, one_prop, w, "joint")
    assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))


def test_every_family_takes_the_product_composition(qm9) -> None:
    """composition=product reaches every family's sampler (diffusion, flow matching and score included)."""
    from molgen.config import resolve_config
    from molgen.data.graphs import compute_stats, select_indices
    from molgen.models.registry import family_names, get_family

    for name in family_names():
        family = get_family(name)
        cfg = resolve_config(name, family.config_cls, preset="tiny", overrides={"data": {"properties": ["gap", "mu"]}})
        idx = select_indices(qm9, **cfg.data.selection())
        torch.manual_seed(0)
        model = family(cfg, compute_stats(qm9, idx["train"], cfg.data.properties)).eval()
        cond = {"gap": 6.5, "mu": 2.0}
        mols = model.sample(2, cond=cond, n_atoms=[4, 6], steps=2, seed=0, guidance=1.0, composition="product")
        assert [m.num_atoms for m in mols] == [4, 6], name
        with pytest.raises(MolgenError, match="composition must be one of"):
            model.sample(1, n_atoms=4, steps=2, composition="sum")
