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
