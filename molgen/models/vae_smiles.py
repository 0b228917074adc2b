"""The graph VAE's string decoder (``family.decoder: smiles``): ``p(G | z, y, N)`` as a SMILES language model.

The one-shot slot decoder (:mod:`molgen.nn.graph_decoder`) predicts every atom and bond
independently given ``z``; its argmax graphs break valences and, with a collapsed posterior, are
the same few graphs for every ``z``. This decoder writes the molecule as its explicit-H SMILES
token by token instead (the model of :mod:`molgen.models.smiles_ar`, built without the scaffold
encoder), with the latent mapped to the model width and added to the condition vector at every
position — the SMILES decoder of Gómez-Bombarelli et al. (ACS Cent. Sci. 2018), with a
Transformer instead of a GRU and with the grammar / valence mask of
:mod:`molgen.models.smiles_grammar` at sampling time and in the likelihood, so every sample is a
strictly valid molecule by construction (as in the syntax-directed VAE of Dai et al., ICLR 2018).

``log p(G | z, y, N)`` is the constrained log-probability of the molecule's explicit-H SMILES
(end token included), the exact term of :class:`molgen.models.smiles_ar.SmilesAR`; a molecule
whose string cannot be encoded has ``ok = False`` (left out of the loss, ``-inf`` likelihood).
Sampling draws tokens from ``p(s | z, y, N)`` (``temperature``, ``top_k``; ``top_k=1`` is greedy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from molgen.chem.elements import Molecule3D
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.models.smiles_ar import SmilesAR, SmilesARConfig
from molgen.models.smiles_chem import smiles_to_molecule


class SmilesLatentDecoder(nn.Module):
    """``p(s | z, y, N)``: a :class:`SmilesAR` whose condition vector gets ``W z`` added.

    Args:
        cfg: the VAE's run configuration (its backbone sizes the label encoder).
        stats: training statistics.
        latent_dim, width, layers, heads, dropout, max_len: the latent size and the Transformer's.
    """

    def __init__(self, cfg: RunConfig, stats: DatasetStats, latent_dim: int, width: int, layers: int,
                 heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        fc = SmilesARConfig(d_model=width, num_layers=layers, num_heads=heads, dropout=dropout, max_len=max_len,
                            constrained=True, scaffold_prob=0.0, scaffold_memory=False,
                            cond_drop_prob=0.0, prop_drop_prob=0.0)
        self.lm = SmilesAR(dataclasses.replace(cfg, family=fc), stats)
        self.from_latent = nn.Linear(latent_dim, width)

    def log_prob(self, batch: Any, z: Tensor, y: Tensor, y_mask: Tensor, train: bool) -> tuple[Tensor, Tensor]:
        """``log p(s | z, y, N)`` per molecule ``[B]`` (grammar-constrained unless ``train``) and ``ok [B]``."""
        lp, enc = self.lm.token_log_probs(batch, train, labels=(y, y_mask), extra=self.from_latent(z))
        return lp.sum(1), enc["ok"]

    @torch.no_grad()
    def decode(self, z: Tensor, counts: Tensor, experts: list[tuple[Tensor, Tensor, Tensor]], temperature: float,
               top_k: int | None, seeds: list[int], gen: torch.Generator, progress: bool) -> list[Molecule3D]:
        """Sample one string per latent (grammar mask on), then molecules with ETKDG coordinates."""
        ids = self.lm._decode(counts, experts, [None] * len(seeds), temperature, top_k, None, gen, progress,
                              constrained=True, extra=self.from_latent(z))
        return [smiles_to_molecule(self.lm.vocab.decode(s), seed) for s, seed in zip(ids, seeds)]
