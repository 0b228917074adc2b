"""Next-token filters for autoregressive sampling: top-k and nucleus (top-p, Holtzman et al. 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from molgen.errors import MolgenError


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the ``k`` largest logits per row (others ``-inf``); ``None`` keeps all."""
    if k is None or k >= logits.shape[-1]:
        return logits
    if k < 1:
        raise MolgenError("top_k must be at least 1")
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose mass is >= ``p``."""
    if p is None or p >= 1.0:
        return logits
    if p <= 0.0:
        raise MolgenError("top_p must be in (0, 1]")
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the more probable tokens
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
