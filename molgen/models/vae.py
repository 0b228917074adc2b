"""``vae``: a conditional graph VAE whose encoder is the shared E(3)-equivariant backbone.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; a one-shot graph decoder over a
fixed number of node slots as in GraphVAE (Simonovsky & Komodakis, ICANN 2018); a conditional
prior as in the CVAE (Sohn, Lee & Yan, NeurIPS 2015); the importance-weighted bound of Burda,
Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.

- **Encoder** ``q(z | G)``: the shared backbone over the 3D molecule (scaled one-hot atom types +
  formal charges, true positions, no condition) -> its invariant graph embedding -> mean and
  log-variance of a graph-level latent ``z`` (``latent_dim``). ``z`` is therefore invariant under
  rotations, reflections, translations and atom permutations. No per-node latents.
- **Prior** ``p(z | y)``: a diagonal Gaussian whose mean and log-variance are a linear map of the
  condition vector ``c(y, mask)`` (:class:`~molgen.nn.conditioning.ConditionEncoder`, no time).
  With every label masked it is the unconditional prior; it starts as N(0, I). A learned
  conditional prior lets the KL term place molecules with property ``y`` where ``p(z | y)`` puts
  its mass, so conditional sampling does not rely on the decoder reading ``y`` alone.
- **Decoder** ``p(G | z, y, N)``: a Transformer over ``N`` node slots (slot embedding + atom-count
  embedding + a linear map of ``(z, c)``); per slot a categorical over atom types and over the
  formal charge (-1, 0, +1; ``include_charges``), per pair ``i < j`` a categorical over the bond
  order (0 none, 1, 2, 3) from a symmetric pair feature (:mod:`molgen.nn.graph_decoder`).
  Factorized given ``z``. With ``decoder: smiles`` the decoder is instead a SMILES language model
  ``p(s | z, y, N)`` with the grammar / valence mask (:mod:`molgen.models.vae_smiles`): strictly
  valid molecules by construction, and an autoregressive decoder that needs ``z`` to tell molecules apart.
- **Node order.** Reconstruction needs one: the target graph is the molecule's source SMILES
  (``batch.smiles``) with hydrogens added, kekulized, atoms in molgen's canonical order (heavy
  atoms, then hydrogens, each by RDKit's canonical ranking; :func:`molgen.chem.molgraph.canonical_graph`).
  Where a graph has no SMILES, or the SMILES's atom count differs from the geometry's, the graph's
  own atom order is used with bonds from EDM's distance rule.
- **Coordinates** are not learned: RDKit ETKDG + MMFF94 (:mod:`molgen.chem.conformer`) embeds each decoded graph
  (:func:`molgen.chem.molgraph.embed_graph`, hydrogens already explicit, the atom count never
  changes). A graph RDKit cannot sanitize or embed keeps its atoms and ``bonds`` with NaN
  positions; the metrics judge every molecule by its decoded ``bonds``.

``log_likelihood`` is the **ELBO** ``E_q[log p(G | z, y, N)] - KL(q(z | G) || p(z | y)) + log p(N)``
in nats per molecule, a lower bound of ``log p(G, N | y)`` for the canonically ordered graph (no
sum over the N! orderings; positions are not modelled). The KL term is exact (two diagonal
Gaussians); the expectation uses ``elbo_samples`` reparameterized draws. ``log_likelihood_iw(batch, k)``
is the **IWAE** bound with ``k`` samples (>= the ELBO in expectation, -> ``log p`` as k grows).
``log p(N)`` is the training atom-count histogram's.

Training minimizes the negative ELBO per atom with the KL weighted by ``kl_weight`` and free bits
(``free_bits`` nats per latent dimension, see :meth:`GraphVAE.loss`); labels are dropped as in the
point-cloud families (``cond_drop_prob``, ``prop_drop_prob``).

Sampling draws ``z ~ p(z | y)`` and decodes each categorical by its most likely value (argmax);
the smiles decoder draws tokens from ``p(s | z, y, N)`` (``temperature``, ``top_k``).
``steps`` is ignored (one decoder pass). ``guidance`` w is classifier-free guidance on the
decoder's logits, ``(1 + w) l(z, y) - w l(z, no labels)`` (0: none; ``composition=product``: one
expert per property, :mod:`molgen.sampling.guidance`); the prior stays ``p(z | y)``.
Latent evaluation: :mod:`molgen.models.vae_latent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from molgen.chem.bonds import bond_order_matrix
from molgen.chem.elements import ELEMENTS, Molecule3D
from molgen.chem.molgraph import MolGraph, canonical_graph, embed_graph
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import Generator, SampleChunk, register, sampling_generator
from molgen.models.conditioning import ConditioningConfig
from molgen.models.options import TokenDrawOptions
from molgen.models.pointcloud import AtomFeatureConfig, atom_features, feature_dim
from molgen.models.vae_smiles import SmilesLatentDecoder
from molgen.nn.graph import remove_mean
from molgen.nn.backbone import EquivariantBackbone
from molgen.nn.conditioning import ConditionEncoder
from molgen.nn.graph_decoder import CHARGES, DecoderLogits, GraphDecoder
from molgen.sampling.guidance import guidance_experts


@dataclass
class VAEConfig(ConditioningConfig, AtomFeatureConfig):
    """Family options of ``vae`` (YAML section ``family:``).

    ``type_scale`` / ``charge_scale`` scale the encoder's input features, ``include_charges`` also
    decides whether charges are decoded.
    """

    sample_batch_size: int = 500
    decoder: str = "graph"  # graph: one-shot slot decoder; smiles: constrained string decoder (vae_smiles)
    latent_dim: int = 64
    decoder_dim: int = 256
    decoder_layers: int = 4
    decoder_heads: int = 8
    kl_weight: float = 1.0
    free_bits: float = 0.1
    elbo_samples: int = 1
    decoder_dropout: float = 0.0  # smiles decoder only
    max_len: int = 96  # smiles decoder only: tokens per string, end token included
    temperature: float = 1.0  # smiles decoder only: sampling temperature of the tokens
    top_k: int | None = None  # smiles decoder only: keep the k most likely tokens (1: greedy)


@dataclass(frozen=True)
class VAESampleOptions(TokenDrawOptions):
    """``vae``'s sampler options; ``temperature`` and ``top_k`` apply to the smiles decoder (the graph
    decoder takes each categorical's most likely value)."""


class GraphTargets(NamedTuple):
    """Canonically ordered target graphs, padded: types/charge classes ``[B, L]``, bonds ``[B, L, L]``."""

    types: Tensor
    charges: Tensor  # class index into CHARGES
    bonds: Tensor
    mask: Tensor  # [B, L] bool
    counts: Tensor  # [B]


def gaussian_kl(mu: Tensor, logvar: Tensor, prior_mu: Tensor | None = None,
                prior_logvar: Tensor | None = None, reduce: bool = True) -> Tensor:
    """``KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar))`` of diagonal Gaussians, summed over the last
    axis (per dimension with ``reduce=False``).

    The prior defaults to N(0, I): ``0.5 * sum(mu^2 + e^logvar - 1 - logvar)``.
    """
    if prior_mu is None:
        prior_mu = torch.zeros_like(mu)
    if prior_logvar is None:
        prior_logvar = torch.zeros_like(logvar)
    ratio = torch.exp(logvar - prior_logvar)
    kl = 0.5 * (ratio + (mu - prior_mu) ** 2 * torch.exp(-prior_logvar) - 1.0 - (logvar - prior_logvar))
    return kl.sum(-1) if reduce else kl


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, e^logvar)`` of a diagonal Gaussian, summed over the last axis."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + np.log(2 * np.pi)).sum(-1)


def _full(x: Tensor) -> Tensor:
    """At least float32 (bf16 / fp16 outputs of autocast), float64 kept."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _masked_log_prob(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``log softmax(logits)[target]`` over the masked positions of each molecule: ``[B]``."""
    lp = torch.log_softmax(_full(logits), -1).gather(-1, target[..., None])[..., 0]
    return (lp * mask).flatten(1).sum(-1)


@register("vae")
class GraphVAE(Generator):
    """Conditional graph VAE (see the module docstring)."""

    config_cls = VAEConfig
    options_cls = VAESampleOptions

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        fc, bcfg = self.fc, cfg.backbone
        self.num_types = len(ELEMENTS)
        self.feat_dim = feature_dim(fc, self.num_types)
        if fc.latent_dim < 1 or fc.elbo_samples < 1:
            raise MolgenError("family.latent_dim and family.elbo_samples must be at least 1")
        if fc.decoder not in ("graph", "smiles"):
            raise MolgenError(f"family.decoder must be graph or smiles, got {fc.decoder!r}")
        self.encoder = EquivariantBackbone(self.feat_dim, bcfg)
        self.to_latent = nn.Linear(bcfg.graph_dim, 2 * fc.latent_dim)
        self.cond = ConditionEncoder(len(stats.properties), bcfg.cond_dim, use_time=False)
        self.to_prior = nn.Linear(bcfg.cond_dim, 2 * fc.latent_dim)
        nn.init.zeros_(self.to_prior.weight)  # p(z | y) starts as N(0, I)
        nn.init.zeros_(self.to_prior.bias)
        if fc.decoder == "smiles":
            self.decoder = SmilesLatentDecoder(cfg, stats, fc.latent_dim, fc.decoder_dim, fc.decoder_layers,
                                               fc.decoder_heads, fc.decoder_dropout, fc.max_len)
        else:
            self.decoder = GraphDecoder(fc.latent_dim, bcfg.cond_dim, stats.max_atoms, self.num_types,
                                        fc.include_charges, fc.decoder_dim, fc.decoder_layers, fc.decoder_heads)

    # ------------------------------------------------------------------ the three distributions
    def encode(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``q(z | G)``: mean and log-variance ``[B, latent_dim]`` from the backbone's graph embedding."""
        B = batch.num_graphs
        pos = remove_mean(batch.pos, batch.batch, B)
        out = self.encoder(atom_features(batch, self.fc, self.num_types), pos, batch.batch, None, num_graphs=B)
        mu, logvar = _full(self.to_latent(out.graph)).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def prior(self, y: Tensor, y_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(c, mean, log-variance)`` of ``p(z | y)`` for labels ``[B, P]`` (mask 0: unconditional)."""
        c = self.cond(y.shape[0], None, y, y_mask)
        mu, logvar = _full(self.to_prior(c)).chunk(2, dim=-1)
        return c, mu, logvar.clamp(-12.0, 8.0)

    def kl(self, mu: Tensor, logvar: Tensor, y: Tensor, y_mask: Tensor) -> Tensor:
        """The KL term ``KL(q(z | G) || p(z | y))`` in nats, ``[B]``, in closed form."""
        _, mu_p, logvar_p = self.prior(y, y_mask)
        return gaussian_kl(mu, logvar, mu_p, logvar_p)

    def log_prob_graph(self, logits: DecoderLogits, targets: GraphTargets) -> Tensor:
        """``log p(G | z, y, N)`` of the canonically ordered target graphs, nats ``[B]``."""
        mask = targets.mask
        L = mask.shape[1]
        upper = torch.ones(L, L, dtype=torch.bool, device=mask.device).triu(1)
        pair_mask = mask[:, :, None] & mask[:, None, :] & upper
        out = _masked_log_prob(logits.types, targets.types, mask)
        out = out + _masked_log_prob(logits.bonds, targets.bonds, pair_mask)
        if logits.charges is not None:
            out = out + _masked_log_prob(logits.charges, targets.charges, mask)
        return out

    # ------------------------------------------------------------------ targets
    def graph_targets(self, batch: Any) -> GraphTargets:
        """The batch's graphs in canonical order (module docstring), padded, on the batch's device."""
        B = batch.num_graphs
        counts = torch.bincount(batch.batch, minlength=B).cpu()
        L = int(counts.max())
        types = np.zeros((B, L), dtype=np.int64)
        charges = np.full((B, L), CHARGES.index(0), dtype=np.int64)
        bonds = np.zeros((B, L, L), dtype=np.int64)
        smiles = getattr(batch, "smiles", None)
        if isinstance(smiles, str):
            smiles = [smiles]
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        for b, n in enumerate(counts.tolist()):
            graph = canonical_graph(smiles[b]) if smiles is not None else None
            if graph is None or graph.num_atoms != n:
                graph = self._graph_from_positions(batch, starts[b], n)
            types[b, :n] = graph.atom_types
            charges[b, :n] = np.clip(graph.charges, CHARGES[0], CHARGES[-1]) - CHARGES[0]
            i, j, order = graph.edges.T
            bonds[b, i, j] = order
            bonds[b, j, i] = order
        device = batch.pos.device
        slots = torch.arange(L)
        return GraphTargets(torch.from_numpy(types).to(device), torch.from_numpy(charges).to(device),
                            torch.from_numpy(bonds).to(device), (slots[None] < counts[:, None]).to(device),
                            counts.to(device))

    @staticmethod
    def _graph_from_positions(batch: Any, start: int, n: int) -> MolGraph:
        """Fallback target: the graph's own atom order, bonds by EDM's distance rule."""
        sl = slice(start, start + n)
        types = batch.atom_types[sl].cpu().numpy()
        pos = batch.pos[sl].detach().cpu().double().numpy()
        return MolGraph.from_bond_matrix(types, batch.charges[sl].cpu().numpy(), bond_order_matrix(types, pos))

    # ------------------------------------------------------------------ protocol
    def reconstruction(self, batch: Any, z: Tensor, c: Tensor, y: Tensor, y_mask: Tensor, train: bool,
                       targets: GraphTargets | None = None) -> tuple[Tensor, Tensor]:
        """``log p(G | z, y, N)`` nats ``[B]`` and ``ok [B]`` (False: the graph has no target; ``-inf``)."""
        if self.fc.decoder == "smiles":
            lp, ok = self.decoder.log_prob(batch, z, y, y_mask, train)
            return torch.where(ok, lp, torch.full_like(lp, float("-inf"))), ok
        targets = self.graph_targets(batch) if targets is None else targets
        lp = self.log_prob_graph(self.decoder(z, c, targets.counts), targets)
        return lp, torch.ones_like(lp, dtype=torch.bool)

    def _elbo_terms(self, batch: Any, train: bool, samples: int = 1) -> dict[str, Tensor]:
        targets = self.graph_targets(batch) if self.fc.decoder == "graph" else None
        mu, logvar = self.encode(batch)
        y, y_mask = self.labels(batch, train)
        c, mu_p, logvar_p = self.prior(y, y_mask)
        std = torch.exp(0.5 * logvar)
        recon = 0.0
        for _ in range(samples):
            lp, ok = self.reconstruction(batch, mu + std * torch.randn_like(mu), c, y, y_mask, train, targets)
            recon = recon + lp / samples
        kl_dims = gaussian_kl(mu, logvar, mu_p, logvar_p, reduce=False)  # [B, d]
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs)
        return {"recon": recon, "ok": ok, "kl": kl_dims.sum(-1), "kl_dims": kl_dims, "counts": counts}

    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Negative ELBO per atom (KL weighted by ``kl_weight``, with free bits), averaged over molecules.

        Free bits (Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
        NeurIPS 2016): a latent dimension whose batch-mean KL is below ``free_bits`` nats is not
        penalized, which keeps the encoder from collapsing onto the prior before the decoder has
        learned to read ``z``. The reported ELBO (``log_likelihood``) always uses the full KL.
        """
        out = self._elbo_terms(batch, train=True)
        kl_dims, ok = out["kl_dims"], out["ok"]
        penalized = (kl_dims.detach()[ok].mean(0) >= self.fc.free_bits).to(kl_dims.dtype)  # [d]
        recon = torch.where(ok, out["recon"], torch.zeros_like(out["recon"]))  # no target: not trained on
        per_mol = (-recon + self.fc.kl_weight * (kl_dims * penalized).sum(-1)) / out["counts"]
        n_ok = ok.sum().clamp(min=1)
        return {"loss": (per_mol * ok).sum() / n_ok, "recon": -(recon.sum() / n_ok).detach(),
                "kl": (out["kl"] * ok).sum().detach() / n_ok}

    def log_likelihood(self, batch: Any) -> Tensor:
        """The ELBO (a lower bound of log p(G, N | y)), nats per molecule ``[B]``; see the module docstring."""
        out = self._elbo_terms(batch, train=False, samples=self.fc.elbo_samples)
        return out["recon"] - out["kl"] + self.stats.log_prob_n_atoms(out["counts"])

    @torch.no_grad()
    def log_likelihood_iw(self, batch: Any, k: int = 16) -> Tensor:
        """The IWAE bound with ``k`` importance samples, nats per molecule ``[B]`` (>= the ELBO on average)."""
        if k < 1:
            raise MolgenError("k must be at least 1")
        targets = self.graph_targets(batch) if self.fc.decoder == "graph" else None
        mu, logvar = self.encode(batch)
        y, y_mask = self.labels(batch, train=False)
        c, mu_p, logvar_p = self.prior(y, y_mask)
        std = torch.exp(0.5 * logvar)
        log_w = []
        for _ in range(k):
            z = mu + std * torch.randn_like(mu)
            lp, _ = self.reconstruction(batch, z, c, y, y_mask, False, targets)
            log_w.append(lp + gaussian_log_prob(z, mu_p, logvar_p) - gaussian_log_prob(z, mu, logvar))
        bound = torch.logsumexp(torch.stack(log_w), dim=0) - float(np.log(k))
        return bound + self.stats.log_prob_n_atoms(torch.bincount(batch.batch, minlength=batch.num_graphs))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def decode_latents(self, z: Tensor, y: Tensor, y_mask: Tensor, counts: Tensor, guidance: float = 0.0,
                       seeds: Sequence[int] | None = None, progress: bool = False,
                       composition: str = "joint", temperature: float | None = None, top_k: int | None = None,
                       gen: torch.Generator | None = None) -> list[Molecule3D]:
        """Decode latents ``[B, d]`` into molecules of ``counts`` atoms, with ETKDG coordinates: the
        graph decoder's argmax graphs, or strings drawn from the smiles decoder.

        Args:
            z: latents; y, y_mask: normalized labels and mask ``[B, P]``; counts: ``[B]`` atom counts.
            guidance, composition: classifier-free guidance / product of experts on the decoder
                logits, ``sum_k c_k logits(z, y_k)`` (:mod:`molgen.sampling.guidance`).
            seeds: one ETKDG seed per molecule (``None``: RDKit's random seeds).
            temperature, top_k: the smiles decoder's token draw (default: the family config's).
            gen: the generator of the smiles decoder's draws (default: seeded from ``seeds[0]``, else torch's).
        """
        counts = counts.to(z.device)
        if self.fc.decoder == "smiles":
            seeds = [-1] * len(z) if seeds is None else [int(s) for s in seeds]
            if gen is None:
                gen = torch.Generator().manual_seed(seeds[0]) if seeds and seeds[0] >= 0 else sampling_generator(None)
            return self.decoder.decode(z, counts, guidance_experts(y, y_mask, guidance, composition),
                                       self.fc.temperature if temperature is None else temperature,
                                       self.fc.top_k if top_k is None else top_k, seeds, gen, progress)
        logits = None
        for y_k, mask_k, coef in guidance_experts(y, y_mask, guidance, composition):
            out = self.decoder(z, self.cond(z.shape[0], None, y_k, mask_k), counts)
            logits = scale_logits(out, coef) if logits is None else add_logits(logits, scale_logits(out, coef))
        types = logits.types.argmax(-1).cpu().numpy()
        charges = (np.asarray(CHARGES)[logits.charges.argmax(-1).cpu().numpy()] if logits.charges is not None
                   else np.zeros_like(types))
        bonds = torch.triu(logits.bonds.argmax(-1), diagonal=1)
        bonds = (bonds + bonds.transpose(1, 2)).cpu().numpy()
        items = range(len(types))
        if progress:
            from tqdm import tqdm

            items = tqdm(items, desc="ETKDG", leave=False, mininterval=1.0)
        mols = []
        for b in items:
            n = int(counts[b])
            seed = -1 if seeds is None else int(seeds[b])
            mols.append(embed_graph(types[b, :n], charges[b, :n], bonds[b, :n, :n], seed))
        return mols

    def prepare_sampling(self, n: int, opts: VAESampleOptions, gen: torch.Generator,
                         seed: int | None) -> dict[str, Any]:
        """The prior noise ``[n, d]`` and one ETKDG seed per molecule, drawn before the chunks."""
        eps = self.randn((n, self.fc.latent_dim), gen)
        return {"eps": eps, "seeds": torch.randint(0, 2**31 - 1, (n,), generator=gen).tolist()}

    def sample_chunk(self, chunk: SampleChunk, opts: VAESampleOptions, gen: torch.Generator,
                     progress: bool) -> list[Molecule3D]:
        """``z ~ p(z | y)``, one decoder pass, argmax graph, ETKDG; ``opts.steps`` is ignored."""
        _, mu_p, logvar_p = self.prior(chunk.y, chunk.y_mask)
        z = mu_p + torch.exp(0.5 * logvar_p) * chunk.extras["eps"]
        return self.decode_latents(z, chunk.y, chunk.y_mask, chunk.counts, opts.guidance, chunk.extras["seeds"],
                                   progress, opts.composition, opts.temperature, opts.top_k, gen)


def scale_logits(logits: DecoderLogits, coef: Tensor) -> DecoderLogits:
    """Every categorical's logits times the per-molecule coefficients ``coef [B]``."""
    def scale(t: Tensor | None) -> Tensor | None:
        return None if t is None else coef.to(t.dtype).view(-1, *([1] * (t.dim() - 1))) * t

    return DecoderLogits(scale(logits.types), scale(logits.charges), scale(logits.bonds), logits.mask)


def add_logits(a: DecoderLogits, b: DecoderLogits) -> DecoderLogits:
    def add(u: Tensor | None, v: Tensor | None) -> Tensor | None:
        return None if u is None else u + v

    return DecoderLogits(add(a.types, b.types), add(a.charges, b.charges), add(a.bonds, b.bonds), a.mask)
