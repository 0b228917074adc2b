"""The graph decoder of ``vae``: ``(z, c, N)`` -> logits of atom types, charges and bond orders.

A one-shot decoder over ``N`` node slots (GraphVAE, Simonovsky & Komodakis 2018) with a
Transformer in place of GraphVAE's MLP: slot embedding + atom-count embedding + a linear map of the
latent and the condition vector, self-attention across the slots, then per-slot categoricals
(atom type, formal charge) and per-pair categoricals (bond order) from a symmetric pair feature.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

#: Formal charges the decoder can emit (QM9's zwitterions carry +-1).
CHARGES: tuple[int, ...] = (-1, 0, 1)
#: Bond-order classes: 0 (no bond), single, double, triple (kekulized).
NUM_BOND_CLASSES = 4
# Rough QM9 frequencies of the classes among atom pairs / atoms: only the decoder's starting point,
# so that an untrained model decodes neutral, unbonded atoms instead of an impossible tangle.
_BOND_PRIOR = (0.88, 0.10, 0.015, 0.005)
_CHARGE_PRIOR = (0.005, 0.99, 0.005)


class DecoderLogits(NamedTuple):
    """Decoder outputs for ``B`` molecules padded to ``L`` slots (``mask [B, L]`` marks real ones)."""

    types: Tensor  # [B, L, T]
    charges: Tensor | None  # [B, L, 3]
    bonds: Tensor  # [B, L, L, 4], symmetric in the two slot axes
    mask: Tensor  # [B, L] bool


class GraphDecoder(nn.Module):
    """``(z, c, N)`` -> logits of atom types, charges and bond orders for ``N`` node slots.

    Args:
        latent_dim, cond_dim: widths of ``z`` and of the condition vector ``c``.
        max_atoms: the largest ``N`` (slots and atom-count embeddings).
        num_types: number of atom types.
        charges: whether to output charge logits.
        dim, layers, heads: the Transformer's width, depth and attention heads.

    Shapes: z ``[B, latent_dim]``, c ``[B, cond_dim]``, counts ``[B]`` -> :class:`DecoderLogits`.
    """

    def __init__(self, latent_dim: int, cond_dim: int, max_atoms: int, num_types: int, charges: bool,
                 dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.slot = nn.Embedding(max_atoms, dim)
        self.count = nn.Embedding(max_atoms + 1, dim)
        self.inp = nn.Linear(latent_dim + cond_dim, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.type_out = nn.Linear(dim, num_types)
        self.charge_out = nn.Linear(dim, len(CHARGES)) if charges else None
        self.pair_sum = nn.Linear(dim, dim)
        self.pair_prod = nn.Linear(dim, dim)
        self.bond_out = nn.Linear(dim, NUM_BOND_CLASSES)
        for head, prior in ((self.bond_out, _BOND_PRIOR), (self.charge_out, _CHARGE_PRIOR)):
            if head is not None:
                nn.init.zeros_(head.weight)
                with torch.no_grad():
                    head.bias.copy_(torch.tensor(prior).log())

    def forward(self, z: Tensor, c: Tensor, counts: Tensor) -> DecoderLogits:
        L = int(counts.max())
        slots = torch.arange(L, device=z.device)
        mask = slots[None, :] < counts[:, None]  # [B, L]
        h = self.slot(slots)[None] + self.count(counts)[:, None] + self.inp(torch.cat([z, c], -1))[:, None]
        h = self.norm(self.body(h, src_key_padding_mask=~mask))  # [B, L, D]
        # symmetric pair features: a_i + a_j and b_i * b_j
        a, b = self.pair_sum(h), self.pair_prod(h)
        pair = nn.functional.silu(a[:, :, None] + a[:, None, :] + b[:, :, None] * b[:, None, :])  # [B, L, L, D]
        charges = self.charge_out(h) if self.charge_out is not None else None
        return DecoderLogits(self.type_out(h), charges, self.bond_out(pair), mask)
