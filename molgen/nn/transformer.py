"""A pre-norm Transformer decoder with cross-attention and a KV cache (Vaswani et al. 2017).

The ``smiles-ar`` family's token network: causal self-attention over the string, cross-attention
to memory tokens (the backbone-encoded scaffold), an MLP; :class:`Attention` keeps keys and values
of past steps (self-attention) or of the fixed memory (cross-attention) in a ``cache`` dict so
that incremental decoding costs O(T) per step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from molgen.errors import MolgenError


class Attention(nn.Module):
    """Multi-head attention with an optional KV cache (self-attention) or cached memory (cross)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise MolgenError(f"family.d_model ({d}) must be divisible by family.num_heads ({heads})")
        self.h, self.dropout = heads, dropout
        self.q, self.kv, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def _split(self, x: Tensor) -> Tensor:  # [B, T, d] -> [B, H, T, d/H]
        B, T, d = x.shape
        return x.view(B, T, self.h, d // self.h).transpose(1, 2)

    def forward(self, x: Tensor, source: Tensor | None, *, causal: bool = False, key_mask: Tensor | None = None,
                cache: dict[str, Tensor] | None = None, cross: bool = False) -> Tensor:
        # x: [B, T, d]; source: [B, S, d] (None: self-attention on x); key_mask: [B, S] True = attend
        q = self._split(self.q(x))
        if cross and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = (self._split(z) for z in self.kv(x if source is None else source).chunk(2, dim=-1))
            if cache is not None and not cross and "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            if cache is not None:
                cache["k"], cache["v"] = k, v
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=causal and mask is None)
        B, H, T, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * dh))


class DecoderBlock(nn.Module):
    """Pre-norm Transformer decoder block: causal self-attention, cross-attention to memory, MLP."""

    def __init__(self, d: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, heads, dropout)
        self.cross_attn = Attention(d, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor,
                cache: dict[str, dict[str, Tensor]] | None = None) -> Tensor:
        causal = cache is None or "k" not in cache["self"]
        x = x + self.drop(self.self_attn(self.ln1(x), None, causal=causal and x.shape[1] > 1,
                                         cache=None if cache is None else cache["self"]))
        x = x + self.drop(self.cross_attn(self.ln2(x), memory, key_mask=memory_mask,
                                          cache=None if cache is None else cache["cross"], cross=True))
        return x + self.drop(self.mlp(self.ln3(x)))
