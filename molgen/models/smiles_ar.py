"""``smiles-ar``: an autoregressive Transformer over SMILES tokens, conditioned on y, N and a scaffold.

Method: a decoder-only Transformer language model of SMILES strings (Vaswani et al. 2017; the
SMILES language model of Segler et al., ACS Cent. Sci. 2018, and the conditional generators that
prefix the condition, e.g. Kotsias et al., Nat. Mach. Intell. 2020). Each training molecule is
written with **every hydrogen as an atom token** (RDKit ``AddHs`` + canonical ``MolToSmiles``,
no stereo; :mod:`molgen.models.smiles_tokenizer`), so a string's atom-token count is the molecule's
atom count N as QM9 counts it. The model factorizes ``p(s | y, N, scaffold) = prod_t p(s_t | s_<t)``:

- input ``t`` embeds token ``s_t`` + position + *remaining atoms* ``N - #atoms(s_<=t)`` (a
  deterministic function of the prefix, so the model always knows how many atoms are left) + the
  condition vector ``c`` of :class:`molgen.nn.conditioning.ConditionEncoder` (``use_time=False``,
  masked labels) added at every position; token 0 is ``<bos>``;
- pre-norm blocks: causal self-attention, **cross-attention to memory tokens**, MLP;
- memory = a learned "no scaffold" token, followed by one token per heavy atom of the scaffold /
  fragment: the shared equivariant backbone (:class:`molgen.nn.backbone.EquivariantBackbone`) runs
  on the scaffold's 3D structure (one-hot element + formal charge) and its invariant node scalars
  are projected to the model width. Hydrogens of the scaffold are not memory tokens.

Constrained decoding. The atom-count budget (:func:`molgen.models.smiles_grammar.budget_mask`,
everywhere): no ``<pad>/<bos>/<unk>``, no end before the N-th atom, no atom, ``(`` or ``.`` after
it (the end not forced: ~5 % of QM9's strings close a ring after their last atom), only atoms when
they fill the slots left, the end at slot ``max_len``. ``constrained`` (family and sampler option,
default on) ANDs in the grammar of :mod:`molgen.models.smiles_grammar`: strictly valid strings by
construction, but for rare dead ends (counted invalid). The likelihood uses it too (exact for what
sampling draws); the loss does not (the shipped models were trained so, the grammar only
renormalizes over tokens no training string takes, and would slow every step).

Training: teacher forcing, mean token NLL under the budget mask. Labels are dropped like the point-cloud
families (``cond_drop_prob`` for the whole set, ``prop_drop_prob`` per property), which gives
classifier-free guidance on logits, ``(1 + w) logits(y) - w logits(no labels)`` (N and the scaffold
are kept in both terms). With probability ``scaffold_prob`` a molecule's Bemis–Murcko scaffold
(RDKit ``GetScaffoldForMol``; empty for acyclic molecules) is its memory, with coordinates taken
from the molecule's **own QM9 geometry** (QM9 lists heavy atoms in SMILES atom order, so scaffold
atom k of the SMILES is the k-th heavy atom of the geometry; the 0.01 % of molecules whose heavy
element sequence disagrees get no scaffold). At generation a user scaffold SMILES is embedded by
RDKit ETKDG (v3, with hydrogens, then hydrogens dropped). The backbone only sees distances, so
DFT vs ETKDG geometries differ little in what it encodes.

``log_likelihood`` is **exact**: ``log p(s | y, N) + log p(N)`` in nats per molecule, where the
first term sums the constrained token log-probabilities of the molecule's explicit-H SMILES,
end token included, given the batch's labels (``y_mask`` as given, no dropout, eval mode, no
scaffold), and ``log p(N)`` is the training atom-count histogram
(``self.stats.log_prob_n_atoms``, as ``diffusion`` does; it ignores y). Molecules whose string
exceeds ``max_len`` tokens or does not parse get ``-inf``. :meth:`SmilesAR.perplexity` and
:meth:`SmilesAR.bits_per_character` report the string term only (per token incl. the end token;
per character of the explicit-H SMILES + 1 for the end).

Sampling: ``sample(n, cond, n_atoms, steps, guidance, seed, batch_size, progress, temperature=1.0,
top_k=None, top_p=None, scaffold=None, constrained=True)``; ``steps`` is ignored (a string takes as
many steps as it has tokens). Order per step: guidance on raw logits, the masks, temperature, top-k, then
nucleus (top-p: the smallest set of tokens with mass >= p), then an inverse-CDF draw with uniforms
from a seeded CPU generator (seeded runs match across devices). A KV cache makes a step O(T).
A valid string becomes a :class:`Molecule3D` with the RDKit atoms (hydrogens explicit, exactly N),
kekulized bond orders in ``bonds``, formal charges and an ETKDG conformer relaxed with MMFF94
(:mod:`molgen.chem.conformer`; of the molecule with
any implicit hydrogens RDKit adds to under-bonded atoms; only the N string atoms are kept;
``NaN`` positions if embedding fails, bonds kept). An invalid string keeps the atoms of its atom
tokens, ``NaN`` positions and ``bonds=None`` (invalid, ``no_structure``). ``smiles`` is the raw
string either way; with a scaffold, ``properties["scaffold_match"]`` is 1.0 if the molecule
contains it (RDKit substructure match), else 0.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.utils import to_dense_batch

from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS, Molecule3D
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models import smiles_grammar as grammar
from molgen.models.base import Generator, SampleChunk, register
from molgen.models.conditioning import ConditioningConfig
from molgen.models.options import TokenDrawOptions
from molgen.models.smiles_chem import (VOCAB, Scaffold, contains_substructure, scaffold_from_smiles,
                                       smiles_to_molecule, training_record)
from molgen.models.smiles_decode import decode_tokens
from molgen.nn.backbone import EquivariantBackbone
from molgen.nn.conditioning import ConditionEncoder
from molgen.nn.transformer import DecoderBlock
from molgen.sampling.guidance import guidance_experts


@dataclass
class SmilesARConfig(ConditioningConfig):
    """Family options of ``smiles-ar`` (YAML section ``family:``)."""

    d_model: int = 256
    num_layers: int = 6
    num_heads: int = 8
    ff_mult: int = 4
    dropout: float = 0.1
    max_len: int = 96  # tokens per string, end token included (QM9's longest explicit-H SMILES: 65)
    constrained: bool = True  # grammar mask at sampling and in the likelihood (module docstring)
    scaffold_prob: float = 0.5  # training: use the molecule's Murcko scaffold as memory
    scaffold_memory: bool = True  # build the scaffold encoder (False: no scaffolds, e.g. the VAE's decoder)
    sample_batch_size: int = 500


@dataclass(frozen=True)
class SmilesSampleOptions(TokenDrawOptions):
    """``smiles-ar``'s sampler options (``steps`` is ignored: a string takes as many steps as tokens).

    Args:
        temperature: divides the constrained logits (> 0; ``top_k=1`` is greedy decoding).
        top_k: keep the k most likely tokens (``None``: all).
        top_p: nucleus sampling, the smallest set of tokens with mass >= p, in (0, 1] (``None``: all).
        scaffold: a scaffold / fragment SMILES for every molecule, or one per molecule.
        constrained: the grammar mask (valid by construction; default ``family.constrained``).
    """

    top_p: float | None = None
    scaffold: str | list[str] | None = None
    constrained: bool = True

    def validate(self) -> None:
        super().validate()
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise MolgenError(f"top_p must be in (0, 1], got {self.top_p}")


# ---------------------------------------------------------------------------------- the family


@register("smiles-ar")
class SmilesAR(Generator):
    """Conditional SMILES Transformer with scaffold memory (see the module docstring).

    Args:
        cfg: run configuration; ``cfg.family`` is a :class:`SmilesARConfig`.
        stats: training statistics (atom-count histogram, property normalization).
    """

    config_cls = SmilesARConfig
    options_cls = SmilesSampleOptions

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        fc = self.fc
        if fc.max_len < stats.max_atoms + 1:
            raise MolgenError(f"family.max_len ({fc.max_len}) must exceed the largest atom count ({stats.max_atoms})")
        self.vocab = VOCAB
        d, V = fc.d_model, len(self.vocab)
        self.num_types = len(ELEMENTS)
        self.cond = ConditionEncoder(len(stats.properties), cfg.backbone.cond_dim, use_time=False)
        self.cond_proj = nn.Linear(cfg.backbone.cond_dim, d)
        self.tok_emb = nn.Embedding(V, d)
        self.pos_emb = nn.Embedding(fc.max_len, d)
        self.rem_emb = nn.Embedding(stats.max_atoms + 1, d)  # atoms still to place
        # scaffold memory: the shared backbone on (one-hot element, formal charge) of scaffold atoms
        if fc.scaffold_memory:
            self.scaffold_net = EquivariantBackbone(self.num_types + 1, cfg.backbone)
            self.mem_proj = nn.Linear(cfg.backbone.scalar_dim, d)
        self.null_memory = nn.Parameter(torch.randn(d) * 0.02)
        self.blocks = nn.ModuleList([DecoderBlock(d, fc.num_heads, fc.ff_mult, fc.dropout)
                                     for _ in range(fc.num_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, V)
        self.drop = nn.Dropout(fc.dropout)

    # ------------------------------------------------------------------ memory (scaffolds)
    def encode_memory(self, scaffolds: Sequence[Scaffold | None]) -> tuple[Tensor, Tensor]:
        """Memory tokens ``[B, 1 + M, d]`` and their mask ``[B, 1 + M]`` (token 0: "no scaffold")."""
        B, device = len(scaffolds), self.device
        dtype = self.null_memory.dtype
        null = self.null_memory.expand(B, 1, -1)
        have = [i for i, s in enumerate(scaffolds) if s is not None and s.types.numel() > 0]
        if not have:
            return null, torch.ones(B, 1, dtype=torch.bool, device=device)
        if not self.fc.scaffold_memory:
            raise MolgenError("this model was built without a scaffold encoder (family.scaffold_memory=false)")
        types = torch.cat([scaffolds[i].types for i in have]).to(device)
        charges = torch.cat([scaffolds[i].charges for i in have]).to(device)
        pos = torch.cat([scaffolds[i].pos for i in have]).to(device, dtype)
        counts = torch.tensor([scaffolds[i].types.numel() for i in have], device=device)
        batch = torch.repeat_interleave(torch.arange(len(have), device=device), counts)
        h = torch.cat([F.one_hot(types, self.num_types).to(dtype), charges.to(dtype)[:, None]], dim=-1)
        out = self.scaffold_net(h, pos, batch, None, num_graphs=len(have))
        tokens = self.mem_proj(out.scalars)  # [m_total, d]
        dense, mask = to_dense_batch(tokens, batch, batch_size=len(have))  # [b, M, d], [b, M]
        M = dense.shape[1]
        mem = torch.zeros(B, M, tokens.shape[-1], device=device, dtype=tokens.dtype)
        mmask = torch.zeros(B, M, dtype=torch.bool, device=device)
        idx = torch.tensor(have, device=device)
        mem = mem.index_copy(0, idx, dense)
        mmask = mmask.index_copy(0, idx, mask)
        return (torch.cat([null.to(mem.dtype), mem], dim=1),
                torch.cat([torch.ones(B, 1, dtype=torch.bool, device=device), mmask], dim=1))

    # ------------------------------------------------------------------ the decoder
    def condition(self, y: Tensor, y_mask: Tensor) -> Tensor:
        """``[B, d]`` condition added at every position."""
        return self.cond_proj(self.cond(y.shape[0], None, y, y_mask))

    def _embed(self, ids: Tensor, start: int, remaining: Tensor, cond: Tensor) -> Tensor:
        # ids, remaining: [B, T] -> [B, T, d]
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        rem = remaining.clamp(0, self.rem_emb.num_embeddings - 1)
        x = self.tok_emb(ids) + self.pos_emb(pos)[None] + self.rem_emb(rem) + cond[:, None, :]
        return self.drop(x)

    def forward_tokens(self, ids: Tensor, n_atoms: Tensor, y: Tensor, y_mask: Tensor,
                       memory: tuple[Tensor, Tensor] | None = None, extra: Tensor | None = None) -> Tensor:
        """Raw next-token logits ``[B, T, V]`` for inputs ``ids [B, T]`` (``ids[:, 0]`` = ``<bos>``).

        Args:
            n_atoms: ``[B]`` requested atom counts N.
            y, y_mask: ``[B, P]`` normalized labels and mask.
            memory: from :meth:`encode_memory` (default: no scaffold).
            extra: ``[B, d]`` added to the condition vector (the VAE's latent; default none).
        """
        B = ids.shape[0]
        if memory is None:
            memory = self.encode_memory([None] * B)
        remaining = n_atoms[:, None] - self.vocab.is_atom.to(ids.device)[ids].long().cumsum(1)
        cond = self.condition(y, y_mask)
        x = self._embed(ids, 0, remaining, cond if extra is None else cond + extra)
        for block in self.blocks:
            x = block(x, *memory)
        return self.head(self.ln_f(x))

    def allowed_tokens(self, count: Tensor, n_atoms: Tensor, t: Tensor | int) -> Tensor:
        """The budget mask ``[..., V]`` at 1-based position ``t`` (a tensor broadcastable to ``count`` or
        an int), ``count [...]`` atoms before it, ``n_atoms [...]`` = N (module docstring)."""
        return grammar.budget_mask(self.vocab, count, n_atoms, t, self.fc.max_len)

    # ------------------------------------------------------------------ data -> tokens
    def encode_batch(self, batch: Any) -> dict[str, Any]:
        """Token tensors of a graph batch (its ``smiles`` list).

        Returns:
            ``inputs [B, T]`` (``<bos>`` + tokens), ``targets [B, T]`` (tokens + ``<eos>``, ``<pad>``
            after), ``n_atoms [B]`` (atom tokens), ``ok [B]`` (encodable and within ``max_len``),
            ``chars [B]`` (string length + 1) and ``records`` (see :func:`~molgen.models.smiles_chem.training_record`).
        """
        v, L = self.vocab, self.fc.max_len
        smiles = batch.smiles if isinstance(batch.smiles, (list, tuple)) else [batch.smiles]
        records = [training_record(s) for s in smiles]
        seqs, ok, chars = [], [], []
        for rec in records:
            good = rec is not None and len(rec[0]) + 1 <= L and v.unk not in rec[0]
            seqs.append(list(rec[0]) if good else [])
            ok.append(good)
            chars.append(sum(len(v.tokens[i]) for i in seqs[-1]) + 1)
        T = max(len(s) for s in seqs) + 1
        inputs = torch.full((len(seqs), T), v.pad, dtype=torch.long)
        targets = torch.full((len(seqs), T), v.pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            inputs[i, : len(s) + 1] = torch.tensor([v.bos, *s])
            targets[i, : len(s) + 1] = torch.tensor([*s, v.eos])
        device = batch.pos.device
        inputs, targets = inputs.to(device), targets.to(device)
        n_atoms = v.is_atom.to(device)[targets].long().sum(1)
        return {"inputs": inputs, "targets": targets, "n_atoms": n_atoms,
                "ok": torch.tensor(ok, device=device), "chars": torch.tensor(chars, device=device),
                "records": records}

    def training_scaffolds(self, batch: Any, records: list, use: Tensor) -> list[Scaffold | None]:
        """Murcko scaffolds of the batch molecules with their own QM9 coordinates (where ``use``)."""
        out: list[Scaffold | None] = []
        h = ELEMENT_INDEX["H"]
        ptr = batch.ptr.tolist()
        for i, rec in enumerate(records):
            if rec is None or not bool(use[i]) or not rec[2]:
                out.append(None)
                continue
            types = batch.atom_types[ptr[i]:ptr[i + 1]]
            heavy = torch.nonzero(types != h).flatten()
            if tuple(types[heavy].tolist()) != rec[1]:  # geometry not in SMILES atom order
                out.append(None)
                continue
            sel = heavy[list(rec[2])] + ptr[i]
            out.append(Scaffold(types=batch.atom_types[sel], charges=batch.charges[sel], pos=batch.pos[sel]))
        return out

    def token_log_probs(self, batch: Any, train: bool, labels: tuple[Tensor, Tensor] | None = None,
                        extra: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Constrained log-probability of each target token ``[B, T]`` (0 at padding), and the encoding.

        ``labels``: ``(y, y_mask)`` to use instead of the batch's (dropped at random in training);
        ``extra``: see :meth:`forward_tokens`.
        """
        enc = self.encode_batch(batch)
        y, y_mask = self.labels(batch, train) if labels is None else labels
        B = batch.num_graphs
        if train and self.fc.scaffold_prob > 0:
            use = torch.rand(B, device=batch.pos.device) < self.fc.scaffold_prob
            memory = self.encode_memory(self.training_scaffolds(batch, enc["records"], use))
        else:
            memory = self.encode_memory([None] * B)
        n = enc["n_atoms"]
        logits = self.forward_tokens(enc["inputs"], n, y, y_mask, memory, extra)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 under bf16 autocast
        targets = enc["targets"]
        is_atom = self.vocab.is_atom.to(targets.device)[targets].long()
        count = is_atom.cumsum(1) - is_atom  # atoms before each target
        t = torch.arange(1, targets.shape[1] + 1, device=targets.device)[None].expand_as(targets)
        allowed = self.allowed_tokens(count, n[:, None].expand_as(count), t)
        if self.fc.constrained and not train:  # the likelihood of what constrained sampling draws
            tab = grammar.tables(self.vocab, str(self.device))
            allowed = grammar.sequence_masks(tab, targets, allowed, n, self.fc.max_len, self.vocab.pad)
        logp = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1)
        lp = logp.gather(-1, targets[..., None])[..., 0]
        real = (targets != self.vocab.pad) & enc["ok"][:, None]
        return torch.where(real, lp, torch.zeros_like(lp)), enc

    # ------------------------------------------------------------------ protocol
    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Mean token negative log-likelihood under teacher forcing (with label/scaffold dropout)."""
        lp, enc = self.token_log_probs(batch, train=True)
        n_tok = ((enc["targets"] != self.vocab.pad) & enc["ok"][:, None]).sum().clamp(min=1)
        nll = -lp.sum() / n_tok
        return {"loss": nll, "token_nll": nll.detach(), "ok_frac": enc["ok"].float().mean()}

    def sequence_log_prob(self, batch: Any) -> dict[str, Tensor]:
        """``log_prob [B]`` = log p(s | y, N) in nats (end token included; ``-inf`` if unencodable),
        ``tokens [B]`` (incl. the end token), ``chars [B]`` (string length + 1), ``n_atoms [B]``."""
        was_training = self.training
        self.eval()
        try:
            lp, enc = self.token_log_probs(batch, train=False)
        finally:
            self.train(was_training)
        log_prob = lp.sum(1)
        log_prob = torch.where(enc["ok"], log_prob, torch.full_like(log_prob, float("-inf")))
        tokens = (enc["targets"] != self.vocab.pad).sum(1)
        return {"log_prob": log_prob, "tokens": tokens, "chars": enc["chars"], "n_atoms": enc["n_atoms"]}

    def log_likelihood(self, batch: Any) -> Tensor:
        """Exact ``log p(s | y, N) + log p(N)`` per molecule, in nats (see the module docstring)."""
        out = self.sequence_log_prob(batch)
        return out["log_prob"] + self.stats.log_prob_n_atoms(out["n_atoms"]).to(out["log_prob"].dtype)

    def perplexity(self, batch: Any) -> float:
        """``exp`` of the mean NLL per token (end token included) of the batch's strings."""
        with torch.no_grad():
            out = self.sequence_log_prob(batch)
        return float(torch.exp(-out["log_prob"].sum() / out["tokens"].sum()))

    def bits_per_character(self, batch: Any) -> float:
        """NLL of the strings in bits per character (characters of the explicit-H SMILES + 1 for the end)."""
        with torch.no_grad():
            out = self.sequence_log_prob(batch)
        return float(-out["log_prob"].sum() / (math.log(2.0) * out["chars"].sum()))

    # ------------------------------------------------------------------ sampling
    def prepare_sampling(self, n: int, opts: SmilesSampleOptions, gen: torch.Generator,
                         seed: int | None) -> dict[str, Any]:
        """The scaffold memory of each molecule (embedded once per distinct SMILES) and its query."""
        scaffolds, queries = self._sampling_scaffolds(n, opts.scaffold, 0 if seed is None else seed)
        return {"scaffolds": scaffolds} if queries is None else {"scaffolds": scaffolds, "queries": queries}

    def sample_chunk(self, chunk: SampleChunk, opts: SmilesSampleOptions, gen: torch.Generator,
                     progress: bool) -> list[list[int]]:
        """Token ids of one chunk; guidance / composition combine the experts' logits (module docstring)."""
        experts = guidance_experts(chunk.y, chunk.y_mask, opts.guidance, opts.composition)
        return self._decode(chunk.counts, experts, chunk.extras["scaffolds"], opts.temperature, opts.top_k,
                            opts.top_p, gen, progress, opts.constrained)

    def finish_sampling(self, outputs: list[list[int]], extras: dict[str, Any], opts: SmilesSampleOptions,
                        gen: torch.Generator) -> list[Molecule3D]:
        """Strings -> molecules with exactly the requested atom counts (ETKDG seeds drawn after decoding)."""
        rd_seeds = torch.randint(0, 2**31 - 1, (len(outputs),), generator=gen).tolist()
        mols = [smiles_to_molecule(self.vocab.decode(s), rd_seeds[i]) for i, s in enumerate(outputs)]
        for m, q in zip(mols, extras.get("queries") or ()):
            m.properties["scaffold_match"] = float(contains_substructure(m, q))
        return mols

    def _sampling_scaffolds(self, n: int, scaffold: str | Sequence[str] | None,
                            seed: int) -> tuple[list[Scaffold | None], list | None]:
        if scaffold is None:
            return [None] * n, None
        from rdkit import Chem

        texts = [scaffold] * n if isinstance(scaffold, str) else list(scaffold)
        if len(texts) != n:
            raise MolgenError(f"got {len(texts)} scaffolds for {n} molecules")
        cache: dict[str, tuple[Scaffold, Any]] = {}
        for s in texts:
            if s not in cache:
                cache[s] = (scaffold_from_smiles(s, seed), Chem.MolFromSmiles(s))
        return [cache[s][0] for s in texts], [cache[s][1] for s in texts]

    def _decode(self, counts: Tensor, experts: list[tuple[Tensor, Tensor, Tensor]],
                scaffolds: list[Scaffold | None], temperature: float, top_k: int | None, top_p: float | None,
                gen: torch.Generator, progress: bool, constrained: bool = False,
                extra: Tensor | None = None) -> list[list[int]]:
        """Token ids of one chunk (:func:`molgen.models.smiles_decode.decode_tokens`)."""
        return decode_tokens(self, counts, experts, scaffolds, temperature, top_k, top_p, gen, progress,
                             constrained, extra)
