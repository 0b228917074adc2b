"""Cached incremental decoding of ``smiles-ar`` strings, with guidance experts and the grammar mask.

Order per step (see :mod:`molgen.models.smiles_ar`): guidance on raw logits, the masks, temperature,
top-k, then nucleus (top-p), then an inverse-CDF draw with uniforms from a seeded CPU generator.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from molgen.models import smiles_grammar as grammar
from molgen.models.smiles_chem import Scaffold
from molgen.sampling.token_filters import top_k_filter, top_p_filter

if TYPE_CHECKING:
    from molgen.models.smiles_ar import SmilesAR


def _draw(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, mask: Tensor, rows: Any,
          u: Tensor) -> Tensor:
    """Inverse-CDF draw (uniforms ``u``) from the masked, tempered, top-k / top-p filtered ``logits[rows]``."""
    z = top_p_filter(top_k_filter(logits[rows].masked_fill(~mask, float("-inf")) / temperature, top_k), top_p)
    cdf = z.double().softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=z.shape[-1] - 1)


def decode_tokens(lm: SmilesAR, counts: Tensor, experts: list[tuple[Tensor, Tensor, Tensor]],
                  scaffolds: list[Scaffold | None], temperature: float, top_k: int | None, top_p: float | None,
                  gen: torch.Generator, progress: bool, constrained: bool = False,
                  extra: Tensor | None = None) -> list[list[int]]:
    """Token ids (up to and excluding ``<eos>``) of one chunk, by cached incremental decoding.

    ``experts``: the weighted label sets of :func:`molgen.sampling.guidance.guidance_experts`; the
    K sets run as one batch of ``K * B`` strings that share their tokens, and the next-token
    logits are ``sum_k c_k logits_k``. ``extra [B, d]`` is added to every expert's condition vector.
    """
    device, v, L = lm.device, lm.vocab, lm.fc.max_len
    B = counts.numel()
    n = counts.to(device)
    reps = len(experts)
    mem = lm.encode_memory(scaffolds)
    cond = torch.cat([lm.condition(y_k, m_k) for y_k, m_k, _ in experts])
    if extra is not None:
        cond = cond + extra.to(cond.dtype).repeat(reps, 1)
    coef = torch.stack([c for _, _, c in experts]).float()[:, :, None]  # [K, B, 1]
    if reps > 1:
        mem = (mem[0].repeat(reps, 1, 1), mem[1].repeat(reps, 1))
    caches = [{"self": {}, "cross": {}} for _ in lm.blocks]
    is_atom = v.is_atom.to(device)
    tok = torch.full((B,), v.bos, dtype=torch.long, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    gram = grammar.Decoder(v, n, L) if constrained else None
    out = []
    steps = range(1, L + 1)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="sampling", leave=False, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    for t in steps:
        x = lm._embed(tok.repeat(reps)[:, None], t - 1, (n - count).repeat(reps)[:, None], cond)
        for block, cache in zip(lm.blocks, caches):
            x = block(x, *mem, cache=cache)
        logits = lm.head(lm.ln_f(x))[:, -1].float()  # [K * B, V]
        logits = (coef * logits.view(reps, B, -1)).sum(0)  # [B, V]
        allowed = lm.allowed_tokens(count, n, t)
        u = torch.rand(B, generator=gen, dtype=torch.float64).to(device)
        sample = functools.partial(_draw, logits, temperature, top_k, top_p)
        if constrained:  # filters break the cheap draw's rejection argument: then the exact mask
            nxt = gram.draw(allowed, sample, u, gen, exact=top_k is not None or top_p is not None, done=done)
        else:
            nxt = sample(allowed, slice(None), u)
        nxt = torch.where(done, torch.full_like(nxt, v.pad), nxt)
        out.append(nxt)
        if constrained:
            gram.read(nxt)
        count = count + is_atom[nxt].long()
        done = done | (nxt == v.eos)
        tok = nxt
        if bool(done.all()):
            break
    ids = torch.stack(out, 1).cpu().tolist()
    return [[i for i in row if i not in (v.eos, v.pad)] for row in ids]
