"""Atom types and formal charges as categorical variables: the masking flow of discrete flow matching.

Campbell, Yim, Barzilay, Rainforth & Jaakkola, "Generative Flows on Discrete State-Spaces" (ICML 2024),
masking interpolant; SemlaFlow (Irwin et al. 2024) and FlowMol (Dunn & Koes 2024) generate atom types
this way beside continuous positions. With data at ``t = 1``, each atom's token equals its data value
with probability ``t`` and the extra state MASK otherwise, independently for the atom type and the
formal charge. The network reads the one-hot of the current tokens (MASK included) and predicts logits
of the clean tokens; the loss is their cross-entropy. Sampling is the CTMC's Euler step: during
``[t, t + dt]`` a masked token unmasks with probability ``dt / (1 - t)`` (1 at the last step), to a draw
from the predicted distribution; an unmasked token stays. So every atom ends with a type and a charge
the network chose as a whole category: no rounding of a continuous charge (a stray ``+-1`` charge of a
scaled-Gaussian feature is what fails RDKit validity).

Shapes: N atoms; ``types [N]`` in ``0..T`` (``T`` = MASK, ``T`` atom types) and ``charges [N]`` in
``0..C`` (``C`` = MASK; charge ``q`` is index ``q + 1`` of :data:`CHARGES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from molgen.errors import MolgenError

#: formal charges a categorical atom can take (QM9 has only these)
CHARGES = (-1, 0, 1)


@dataclass
class Tokens:
    """Current categorical state of every atom (``T`` / ``C`` are the MASK indices)."""

    types: Tensor
    charges: Tensor


def gumbel_draw(logits: Tensor, gen: torch.Generator | None) -> Tensor:
    """One draw per row of ``softmax(logits)``, from uniform noise of the CPU generator ``gen``
    (seeded samples match across devices)."""
    u = torch.rand(logits.shape, generator=gen).to(logits.device).clamp(1e-12, 1 - 1e-7)
    return (logits.float() - torch.log(-torch.log(u))).argmax(-1)


class CategoricalAtoms:
    """The masking flow of atom types (and formal charges, unless ``include_charges`` is off)."""

    def __init__(self, num_types: int, include_charges: bool) -> None:
        self.T = num_types
        self.C = len(CHARGES) if include_charges else 0

    @property
    def in_dim(self) -> int:
        """Width of the network input: one-hot types and charges, MASK included."""
        return self.T + 1 + (self.C + 1 if self.C else 0)

    @property
    def out_dim(self) -> int:
        """Width of the network output: logits of the clean types and charges."""
        return self.T + self.C

    def clean(self, batch: Any) -> Tokens:
        """The data tokens of a batch (``batch.atom_types``, ``batch.charges``)."""
        charges = batch.charges.long() + 1
        if self.C and bool(((charges < 0) | (charges >= self.C)).any()):
            raise MolgenError(f"family.atom_types=categorical takes formal charges {list(CHARGES)} only; "
                              f"this dataset has {sorted(set((batch.charges.long()).tolist()))}")
        return Tokens(batch.atom_types.long(), charges if self.C else torch.zeros_like(charges))

    def masked(self, n: int, device: torch.device | str) -> Tokens:
        """The prior: every token MASK."""
        return Tokens(torch.full((n,), self.T, dtype=torch.long, device=device),
                      torch.full((n,), self.C, dtype=torch.long, device=device))

    def corrupt(self, tok: Tokens, t_atom: Tensor) -> Tokens:
        """``tok`` at time ``t_atom [N]``: each token kept with probability t, else MASK."""
        keep_t = torch.rand_like(t_atom) < t_atom
        keep_c = torch.rand_like(t_atom) < t_atom
        return Tokens(torch.where(keep_t, tok.types, self.T), torch.where(keep_c, tok.charges, self.C))

    def features(self, tok: Tokens, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[N, in_dim]`` one-hot of the current tokens."""
        parts = [nn.functional.one_hot(tok.types, self.T + 1)]
        if self.C:
            parts.append(nn.functional.one_hot(tok.charges, self.C + 1))
        return torch.cat(parts, -1).to(dtype)

    def split(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """Network output ``[N, out_dim]`` -> (type logits ``[N, T]``, charge logits ``[N, C]`` or None)."""
        return logits[:, : self.T], (logits[:, self.T:] if self.C else None)

    def cross_entropy(self, logits: Tensor, clean: Tokens) -> Tensor:
        """``[N]`` cross-entropy of the clean type (+ charge) under the predicted logits, nats per atom."""
        lt, lc = self.split(logits.float())
        ce = nn.functional.cross_entropy(lt, clean.types, reduction="none")
        if lc is not None:
            ce = ce + nn.functional.cross_entropy(lc, clean.charges, reduction="none")
        return ce

    def step(self, tok: Tokens, logits: Tensor, t: float, dt: float, gen: torch.Generator | None) -> Tokens:
        """One Euler step of the CTMC from ``t`` to ``t + dt``: masked tokens unmask with probability
        ``dt / (1 - t)`` (all of them when ``t + dt`` reaches 1) to draws from the predicted logits."""
        p = 1.0 if t + dt >= 1.0 - 1e-6 else min(1.0, dt / (1.0 - t))
        lt, lc = self.split(logits)
        u = torch.rand((2, tok.types.shape[0]), generator=gen).to(tok.types.device)
        draw_t = gumbel_draw(lt, gen)
        types = torch.where((tok.types == self.T) & (u[0] < p), draw_t, tok.types)
        charges = tok.charges
        if lc is not None:
            draw_c = gumbel_draw(lc, gen)
            charges = torch.where((tok.charges == self.C) & (u[1] < p), draw_c, tok.charges)
        return Tokens(types, charges)

    def charge_values(self, tok: Tokens) -> Tensor:
        """``[N]`` integer formal charges of unmasked tokens (0 without charges)."""
        if not self.C:
            return torch.zeros_like(tok.charges)
        return torch.as_tensor(CHARGES, device=tok.charges.device)[tok.charges.clamp(max=self.C - 1)]
