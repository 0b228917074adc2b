"""Classifier-free guidance and product-of-experts composition as weighted sets of conditions.

A family that can evaluate its network under several label sets in one batched call combines the
outputs linearly: ``out = sum_k c_k out(x | y_k)``. The output is an energy (``ebm``: ``-log p`` up
to a constant) or next-token logits (``smiles-ar``: ``log p`` up to a per-row constant). The
coefficients of every rule below sum to 1, so per-row constants (the log-normalizer of each expert's
logits) cancel and the combination is again a log-density up to one constant.

* ``joint`` (classifier-free guidance, Ho & Salimans 2022): ``(1 + w) out(x | y) - w out(x | ∅)``.
* ``product`` (product of experts, Hinton 2002; composition of conditional generators as in Du et
  al. 2020 and Liu et al. 2022): with properties assumed conditionally independent given x,
  ``p(x | a, b) ∝ p(x | a) p(x | b) / p(x)``. Each of the P properties given for a molecule is its
  own expert, each expert guided with weight w:
  ``sum_p [(1 + w) out(x | y_p) - w out(x | ∅)] - (P - 1) out(x | ∅)``
  ``= (1 + w) sum_p out(x | y_p) + (1 - (1 + w) P) out(x | ∅)``. With one property it equals ``joint``.

For an autoregressive model the product is applied per token (the next-token distributions are
multiplied), which is the usual approximation: it is exact for the sequence only if the experts'
prefix marginals factor the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from molgen.errors import MolgenError

COMPOSITIONS = ("joint", "product")


def check_composition(value: str) -> str:
    """``value`` if it names a composition rule, else a one-line :class:`MolgenError`."""
    if value not in COMPOSITIONS:
        raise MolgenError(f"composition must be one of {', '.join(COMPOSITIONS)}, got '{value}'")
    return value


def guidance_experts(y: Tensor, y_mask: Tensor, guidance: float = 0.0,
                     composition: str = "joint") -> list[tuple[Tensor, Tensor, Tensor]]:
    """The weighted label sets of a guided / composed evaluation.

    Args:
        y: ``[B, P]`` normalized labels.
        y_mask: ``[B, P]`` which labels are given (bool or 0/1).
        guidance: ``w``; ignored (0) when there are no properties.
        composition: ``joint`` or ``product`` (see the module docstring).

    Returns:
        ``[(y_k [B, P], mask_k [B, P], coefficient_k [B])]``: experts whose coefficient is zero for
        every molecule are left out, so an unguided joint evaluation is one network call. For every
        molecule the coefficients sum to 1.
    """
    B, P = y.shape
    w = float(guidance) if P > 0 else 0.0
    mask = y_mask.to(y.dtype)
    none = (y.new_zeros(B, P), mask.new_zeros(B, P))
    experts: list[tuple[Tensor, Tensor, Tensor]] = []
    if check_composition(composition) == "product":
        for p in range(P):
            m_p = mask.new_zeros(B, P)
            m_p[:, p] = mask[:, p]
            experts.append((y * m_p, m_p, (1 + w) * mask[:, p]))
        experts.append((*none, 1 - (1 + w) * mask.sum(1)))
    else:
        ones = y.new_ones(B)
        experts.append((y * mask, mask, (1 + w) * ones))
        experts.append((*none, -w * ones))
    return [e for e in experts if bool((e[2] != 0).any())]


def stack_experts(experts: list[tuple[Tensor, Tensor, Tensor]], batch_index: Tensor,
                  num_graphs: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The K label sets of :func:`guidance_experts` as one batch of ``K * B`` molecules.

    Args:
        experts: ``[(y_k [B, P], mask_k [B, P], coefficient_k [B])]``.
        batch_index: ``[N]`` atom -> molecule of the B molecules.
        num_graphs: B.

    Returns:
        ``batch_index [K * N]`` of the K copies (copy k holds molecules ``k B .. k B + B - 1``),
        ``y [K * B, P]``, ``y_mask [K * B, P]`` and the coefficients ``[K, B]``; the caller repeats
        its per-atom inputs K times (``x.repeat(K, 1)``) and combines ``sum_k c_k out_k``.
    """
    K, N = len(experts), batch_index.numel()
    offsets = torch.repeat_interleave(torch.arange(K, device=batch_index.device) * num_graphs, N)
    return (batch_index.repeat(K) + offsets, torch.cat([e[0] for e in experts]),
            torch.cat([e[1] for e in experts]), torch.stack([e[2] for e in experts]))
