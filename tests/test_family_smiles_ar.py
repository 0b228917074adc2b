"""The SMILES Transformer (``smiles-ar``) against independent references: tokenizer round trips,
a step-by-step likelihood loop, greedy decoding (with guidance), nucleus/top-k hand cases,
constrained atom counts, invalid strings as counted invalid, and the scaffold memory."""

from __future__ import annotations

import csv
import math
import sys

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold
from torch_geometric.loader import DataLoader

from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.errors import MolgenError
from molgen.metrics.basic import basic_metrics, invalid_reasons
from molgen.models import smiles_grammar as grammar
from molgen.models.registry import get_family
from molgen.models.smiles_chem import scaffold_from_smiles, smiles_to_molecule
from molgen.sampling.token_filters import top_k_filter, top_p_filter
from molgen.models.smiles_tokenizer import (
    BOS, EOS, PAD, UNK, Vocabulary, atom_charge, atom_symbol, explicit_h_smiles, is_atom_token, tokenize,
)


@pytest.fixture(scope="module")
def tiny(qm9):
    family = get_family("smiles-ar")
    cfg = resolve_config("smiles-ar", family.config_cls, preset="tiny",
                         overrides={"data": {"properties": ["gap", "mu"]}})
    idx = select_indices(qm9, **cfg.data.selection())
    stats = compute_stats(qm9, idx["train"], cfg.data.properties)
    graphs = make_graphs(qm9, idx["train"][:32], stats)

    def make(seed: int = 0):
        torch.manual_seed(seed)
        return family(cfg, stats).eval()

    return make, graphs, stats


def _batch(graphs, n):
    return next(iter(DataLoader(graphs[:n], batch_size=n)))


# ------------------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trips_on_the_qm9_fixture(qm9_small_source) -> None:
    csv.field_size_limit(sys.maxsize)
    with open(qm9_small_source / "qm9_part1.csv", newline="") as fh:
        smiles = [row["SMILES"] for row in csv.DictReader(fh)]
    assert len(smiles) == 200
    vocab = Vocabulary.default()
    for s in smiles:
        assert "".join(tokenize(s)) == s
        h = explicit_h_smiles(s)
        toks = tokenize(h)
        assert "".join(toks) == h
        # every atom, hydrogens included, is one token: the count is RDKit's atom count with H
        n_atoms = Chem.AddHs(Chem.MolFromSmiles(s)).GetNumAtoms()
        assert sum(is_atom_token(t) for t in toks) == n_atoms
        assert vocab.unk not in vocab.encode(h) and vocab.decode(vocab.encode(h) + [vocab.eos, 5]) == h


def test_tokenizer_hand_cases() -> None:
    assert tokenize("[NH3+]CC(=O)[O-]") == ["[NH3+]", "C", "C", "(", "=", "O", ")", "[O-]"]
    assert tokenize("ClCBr") == ["Cl", "C", "Br"]
    assert tokenize("C%10CC%10") == ["C", "%10", "C", "C", "%10"]
    assert tokenize("c1cc[nH]c1") == ["c", "1", "c", "c", "[nH]", "c", "1"]
    assert tokenize("[H]C#N") == ["[H]", "C", "#", "N"]
    for s in ("[NH3+]CC(=O)[O-]", "ClCBr", "C%10CC%10", "c1cc[nH]c1", "C/C=C\\C", "[13CH4]"):
        assert "".join(tokenize(s)) == s
    assert (atom_symbol("[NH3+]"), atom_charge("[NH3+]")) == ("N", 1)
    assert (atom_symbol("[nH]"), atom_charge("[nH]")) == ("N", 0)
    assert (atom_symbol("[O-]"), atom_charge("[O-]")) == ("O", -1)
    assert (atom_symbol("Cl"), atom_symbol("c")) == ("Cl", "C")
    assert all(is_atom_token(t) for t in ("[H]", "Cl", "Br", "c", "[nH]")) and not is_atom_token("%10")
    with pytest.raises(MolgenError):
        tokenize("C^C")
    vocab = Vocabulary.default()
    assert vocab.encode("ClC") == [vocab.unk, vocab.index["C"]]  # outside molgen's elements
    assert [vocab.tokens[i] for i in (vocab.pad, vocab.bos, vocab.eos, vocab.unk)] == [PAD, BOS, EOS, UNK]


# ------------------------------------------------------------------------------ likelihood


def _allowed_ref(vocab: Vocabulary, count: int, n: int, t: int, max_len: int) -> torch.Tensor:
    """The decoding constraint written out token by token (1-based position ``t``)."""
    out = []
    for tok in vocab.tokens:
        if tok in (PAD, BOS, UNK):
            ok = False
        elif tok == EOS:
            ok = count == n
        elif count == n:
            ok = not is_atom_token(tok) and tok not in ("(", ".") and t < max_len
        else:
            ok = is_atom_token(tok) if n - count >= max_len - t else True
        out.append(ok)
    return torch.tensor(out)


class _GrammarRef:
    """The grammar mask of one string, step by step (as the sampler applies it)."""

    def __init__(self, vocab: Vocabulary, n: int, max_len: int) -> None:
        self.tab, self.n, self.L = grammar.tables(vocab), torch.tensor([n]), max_len
        self.state = grammar.init_state(1, n)

    def mask(self, allowed: torch.Tensor) -> torch.Tensor:
        return grammar.mask(self.tab, self.state, allowed[None], self.n, self.L)[0]

    def read(self, token: int) -> None:
        grammar.advance(self.tab, self.state, torch.tensor([token]))


@pytest.mark.parametrize("constrained", [False, True])
def test_log_likelihood_equals_a_step_by_step_loop(tiny, constrained: bool) -> None:
    make, graphs, stats = tiny
    model = make()
    model.fc.constrained = constrained
    batch = _batch(graphs, 4)
    vocab, L = model.vocab, model.fc.max_len
    hist = np.asarray(stats.n_atoms_hist, dtype=float)
    totals, n_tokens, n_chars = [], 0, 0
    with torch.no_grad():
        for i in range(4):
            text = explicit_h_smiles(batch.smiles[i])
            ids = vocab.encode(text)
            n = sum(is_atom_token(vocab.tokens[j]) for j in ids)
            assert n == int((batch.batch == i).sum())  # QM9 counts hydrogens as atoms
            y, y_mask = batch.y[i:i + 1], batch.y_mask[i:i + 1]
            total, count, ref = 0.0, 0, _GrammarRef(vocab, n, L)
            for t, target in enumerate(ids + [vocab.eos], start=1):
                prefix = torch.tensor([[vocab.bos] + ids[: t - 1]])
                logits = model.forward_tokens(prefix, torch.tensor([n]), y, y_mask)[0, -1].double()
                allowed = _allowed_ref(vocab, count, n, t, L)
                if constrained:
                    allowed = ref.mask(allowed)
                    assert bool(allowed[target])  # QM9's strings are grammatical
                    ref.read(target)
                total += float(logits.masked_fill(~allowed, -math.inf).log_softmax(-1)[target])
                count += int(is_atom_token(vocab.tokens[target]))
            totals.append(total + math.log(hist[n] / hist.sum()))
            n_tokens += len(ids) + 1
            n_chars += len(text) + 1
        ll = model.log_likelihood(batch)
    assert torch.allclose(ll.double(), torch.tensor(totals, dtype=torch.float64), atol=1e-4)
    seq = sum(totals) - sum(math.log(hist[int((batch.batch == i).sum())] / hist.sum()) for i in range(4))
    assert model.perplexity(batch) == pytest.approx(math.exp(-seq / n_tokens), rel=1e-4)
    assert model.bits_per_character(batch) == pytest.approx(-seq / (math.log(2) * n_chars), rel=1e-4)


# ------------------------------------------------------------------------------ decoding


def _greedy_ref(model, n: int, y, y_mask, guidance: float = 0.0, product: bool = False,
                constrained: bool = False) -> str:
    """Greedy decoding by full recomputation of every prefix, guidance / experts combined by hand."""
    vocab, L = model.vocab, model.fc.max_len
    ids, count, ref = [], 0, _GrammarRef(vocab, n, L)
    for t in range(1, L + 1):
        prefix = torch.tensor([[vocab.bos] + ids])
        run = lambda yy, mm: model.forward_tokens(prefix, torch.tensor([n]), yy, mm)[0, -1]  # noqa: E731
        free = run(torch.zeros_like(y), torch.zeros_like(y_mask))
        if product:  # p(s|a) p(s|b) / p(s), each expert guided: sum_p [(1+w) l_p - w l_0] - (P-1) l_0
            given = [j for j in range(y.shape[1]) if bool(y_mask[0, j])]
            logits = -(len(given) - 1) * free
            for j in given:
                m = torch.zeros_like(y_mask)
                m[0, j] = y_mask[0, j]
                logits = logits + (1 + guidance) * run(y * m, m) - guidance * free
        else:
            logits = run(y, y_mask)
            if guidance:
                logits = (1 + guidance) * logits - guidance * free
        allowed = _allowed_ref(vocab, count, n, t, L)
        if constrained:
            allowed = ref.mask(allowed)
        nxt = int(logits.masked_fill(~allowed, -math.inf).argmax())
        ref.read(nxt)
        if nxt == vocab.eos:
            break
        ids.append(nxt)
        count += int(is_atom_token(vocab.tokens[nxt]))
    return vocab.decode(ids)


@pytest.mark.parametrize("guidance,constrained", [(0.0, False), (2.0, False), (0.0, True), (2.0, True)])
def test_top_k_1_is_greedy_decoding(tiny, guidance: float, constrained: bool) -> None:
    make, _, _ = tiny
    model = make(1)
    counts = [5, 9, 3]
    mols = model.sample(3, n_atoms=counts, cond={"gap": 6.5}, top_k=1, seed=0, guidance=guidance,
                        constrained=constrained)
    y, y_mask = model.resolve_cond(3, {"gap": 6.5})
    with torch.no_grad():
        for i, (m, n) in enumerate(zip(mols, counts)):
            assert m.smiles == _greedy_ref(model, n, y[i:i + 1], y_mask[i:i + 1], guidance, constrained=constrained)
    # greedy decoding ignores the seed and the temperature
    again = model.sample(3, n_atoms=counts, cond={"gap": 6.5}, top_k=1, seed=5, temperature=0.3,
                         guidance=guidance, constrained=constrained)
    assert [m.smiles for m in again] == [m.smiles for m in mols]


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_product_of_experts_is_the_hand_combined_greedy_decoding(tiny, guidance: float) -> None:
    make, _, _ = tiny
    model = make(2)
    counts = [6, 4]
    cond = {"gap": [6.5, 8.0], "mu": [2.0, 0.5]}
    mols = model.sample(2, n_atoms=counts, cond=cond, top_k=1, seed=0, guidance=guidance, composition="product")
    y, y_mask = model.resolve_cond(2, cond)
    with torch.no_grad():
        for i, (m, n) in enumerate(zip(mols, counts)):
            assert m.smiles == _greedy_ref(model, n, y[i:i + 1], y_mask[i:i + 1], guidance, product=True,
                                           constrained=True)
    # with one property given, the product is the joint conditional
    one = model.sample(2, n_atoms=counts, cond={"gap": 6.5}, top_k=1, seed=0, guidance=guidance,
                       composition="product")
    joint = model.sample(2, n_atoms=counts, cond={"gap": 6.5}, top_k=1, seed=0, guidance=guidance)
    assert [m.smiles for m in one] == [m.smiles for m in joint]
    with pytest.raises(MolgenError, match="composition must be one of"):
        model.sample(1, n_atoms=3, composition="sum")


def test_nucleus_keeps_the_smallest_set_with_mass_p() -> None:
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.4) == {1}  # 0.5 >= 0.4
    assert kept(0.75) == {1, 3}  # 0.5 < 0.75 <= 0.8
    assert kept(0.9) == {1, 3, 0}  # 0.8 < 0.9 <= 0.95
    assert kept(0.97) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}
    # tokens already excluded (-inf) stay excluded and do not count
    masked = logits.clone()
    masked[0, 1] = -math.inf  # renormalized: 0.3, 0.1, 0.6 over tokens 0, 2, 3
    assert set(torch.isfinite(top_p_filter(masked, 0.65))[0].nonzero().flatten().tolist()) == {3, 0}
    assert set(torch.isfinite(top_k_filter(logits, 2))[0].nonzero().flatten().tolist()) == {1, 3}


@pytest.mark.parametrize("temperature,constrained", [(1.0, False), (3.0, False), (1.0, True), (3.0, True)])
def test_constrained_decoding_gives_the_requested_atom_counts(tiny, temperature: float, constrained: bool) -> None:
    make, _, stats = tiny
    model = make(2)
    counts = [1, 2, 7, 15, stats.max_atoms]  # no molecule of 1 atom: the grammar's dead end, counted invalid
    mols = model.sample(5, n_atoms=counts, seed=3, temperature=temperature, top_p=0.99, constrained=constrained)
    assert [m.num_atoms for m in mols] == counts
    for m, n in zip(mols, counts):
        toks = tokenize(m.smiles)
        atoms = [is_atom_token(t) for t in toks]
        assert sum(atoms) == n and len(toks) < model.fc.max_len
        last = max(i for i, a in enumerate(atoms) if a)
        assert all(t not in ("(", ".") for t in toks[last + 1:])  # nothing that needs another atom


def _strictly_valid(smiles: str) -> bool:
    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.MolFromSmiles(smiles, params)
    return mol is not None and all(a.GetNumImplicitHs() == 0 and a.GetNumRadicalElectrons() == 0
                                   for a in mol.GetAtoms())


def test_grammar_sampling_of_a_random_model(tiny) -> None:
    """An untrained model, the worst case for the mask: every string has the requested atom count, and
    every one that did not reach a dead end of the mask (replayed here) is strictly valid."""
    make, _, _ = tiny
    model = make(3)
    counts = torch.randint(4, 15, (16,), generator=torch.Generator().manual_seed(0)).tolist()  # ETKDG: small ones
    mols = model.sample(16, n_atoms=counts, seed=1)
    assert [m.num_atoms for m in mols] == counts
    vocab, L = model.vocab, model.fc.max_len
    ids = [vocab.encode(m.smiles) + [vocab.eos] for m in mols]
    targets = torch.tensor([x + [vocab.pad] * (L - len(x)) for x in ids])
    n, tab = torch.tensor(counts), grammar.tables(vocab)
    state, count = grammar.init_state(16, max(counts)), torch.zeros(16, dtype=torch.long)
    ok = torch.ones(16, dtype=torch.bool)
    for t in range(1, L + 1):  # replay: which strings the grammar alone took to their end
        tok = targets[:, t - 1]
        allowed = grammar.allowed(tab, state, n, L) & grammar.budget_mask(vocab, count, n, t, L)
        ok &= allowed.gather(1, tok[:, None])[:, 0] | (tok == vocab.pad)
        grammar.advance(tab, state, tok)
        count += vocab.is_atom[tok].long()
    for m, good in zip(mols, ok.tolist()):
        assert not good or _strictly_valid(m.smiles), m.smiles
    assert int(ok.sum()) >= 12


# ------------------------------------------------------------------------------ molecules


def test_invalid_strings_are_counted_invalid(tiny) -> None:
    unclosed = smiles_to_molecule("[H]C1([H])C([H])([H])[H]", seed=0)  # ring 1 never closed
    assert unclosed.num_atoms == 7 and unclosed.bonds is None and not unclosed.has_coordinates
    assert unclosed.smiles == "[H]C1([H])C([H])([H])[H]"
    pentavalent = smiles_to_molecule("[H]C([H])([H])([H])([H])[H]", seed=0)
    assert pentavalent.bonds is None
    methane = smiles_to_molecule("[H]C([H])([H])[H]", seed=0)
    assert methane.num_atoms == 5 and methane.has_coordinates and methane.bonds.sum() == 8
    assert basic_metrics([unclosed, pentavalent, methane])["validity"] == pytest.approx(1 / 3)
    assert invalid_reasons([unclosed, pentavalent, methane]) == {"no_structure": 2}
    # the untrained model: whatever it emits is counted, nothing is dropped
    make, _, _ = tiny
    mols = make(4).sample(6, n_atoms=6, seed=0)
    metrics = basic_metrics(mols)
    assert metrics["n"] == 6
    assert metrics["validity"] == pytest.approx(sum(m.bonds is not None for m in mols) / 6)


def test_valid_string_gives_kekulized_bonds_and_a_conformer() -> None:
    m = smiles_to_molecule("[H]c1c([H])c([H])c([H])c([H])c1[H]", seed=0)
    assert m.symbols == ["H", "C", "C", "H", "C", "H", "C", "H", "C", "H", "C", "H"]
    carbons = [i for i, s in enumerate(m.symbols) if s == "C"]
    cc = m.bonds[np.ix_(carbons, carbons)]
    assert sorted(np.triu(cc).ravel().tolist())[-6:] == [1, 1, 1, 2, 2, 2]  # Kekulé benzene
    assert (m.bonds.sum(1)[carbons] == 4).all()
    d = np.linalg.norm(m.positions[carbons][:, None] - m.positions[carbons][None], axis=-1)
    assert ((d[cc > 0] > 1.3) & (d[cc > 0] < 1.5)).all()  # aromatic C-C ~1.39 Å
    metrics = basic_metrics([m])
    assert metrics["validity"] == 1.0 and metrics["mol_stability_graph"] == 1.0
    assert metrics["mol_stability"] == 0.0  # EDM's distance rule reads aromatic C-C of 1.39 Å as single bonds
    charged = smiles_to_molecule("[H]C([H])(C(=O)[O-])[N+]([H])([H])[H]", seed=0)
    assert sorted(charged.charges.tolist()) == [-1] + [0] * 8 + [1]


# ------------------------------------------------------------------------------ scaffold memory


def test_training_scaffolds_use_the_molecules_own_geometry(tiny) -> None:
    make, graphs, _ = tiny
    model = make()
    batch = _batch(graphs, 16)
    enc = model.encode_batch(batch)
    scafs = model.training_scaffolds(batch, enc["records"], torch.ones(16, dtype=torch.bool))
    checked = 0
    for smi, s in zip(batch.smiles, scafs):
        core = MurckoScaffold.GetScaffoldForMol(Chem.MolFromSmiles(smi))
        if core.GetNumAtoms() == 0:
            assert s is None
            continue
        assert [a.GetSymbol() for a in core.GetAtoms()] == [("H", "C", "N", "O", "F")[t] for t in s.types.tolist()]
        for b in core.GetBonds():  # bonded scaffold atoms sit at bond length in the QM9 geometry
            d = float((s.pos[b.GetBeginAtomIdx()] - s.pos[b.GetEndAtomIdx()]).norm())
            assert 1.0 < d < 1.7
        checked += 1
    assert checked >= 8


def test_scaffold_memory_changes_the_logits_and_trains(tiny) -> None:
    make, graphs, _ = tiny
    model = make()
    batch = _batch(graphs, 2)
    enc = model.encode_batch(batch)
    y, y_mask = batch.y, batch.y_mask
    benzene = scaffold_from_smiles("c1ccccc1")
    assert benzene.types.tolist() == [1] * 6 and benzene.pos.shape == (6, 3)
    with torch.no_grad():
        plain = model.forward_tokens(enc["inputs"], enc["n_atoms"], y, y_mask)
        with_scaf = model.forward_tokens(enc["inputs"], enc["n_atoms"], y, y_mask,
                                         model.encode_memory([benzene, None]))
    assert (plain[0] - with_scaf[0]).abs().max() > 1e-4  # cross-attention is wired
    assert torch.allclose(plain[1], with_scaf[1], atol=1e-5)  # the "no scaffold" row is unchanged
    # the training loss reaches the backbone through the scaffold memory
    model.train()
    model.fc.scaffold_prob = 1.0
    try:
        model.loss(_batch(graphs, 8))["loss"].backward()
    finally:
        model.fc.scaffold_prob = 0.5
    grads = [p.grad for p in model.scaffold_net.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) > 0


def test_scaffold_at_sampling(tiny) -> None:
    make, _, _ = tiny
    model = make()
    mols = model.sample(3, n_atoms=[12, 14, 9], scaffold="c1ccccc1", seed=0)
    assert [m.num_atoms for m in mols] == [12, 14, 9]
    assert all(m.properties["scaffold_match"] in (0.0, 1.0) for m in mols)
    again = model.sample(3, n_atoms=[12, 14, 9], scaffold="c1ccccc1", seed=0)
    assert [m.smiles for m in again] == [m.smiles for m in mols]
    plain = model.sample(3, n_atoms=[12, 14, 9], seed=0)
    assert [m.smiles for m in plain] != [m.smiles for m in mols]
    per_molecule = model.sample(2, n_atoms=[8, 8], scaffold=["C1CC1", "O=C1CCO1"], seed=0)
    assert len(per_molecule) == 2
    for bad in ("C1CC", "ClC1CC1"):
        with pytest.raises(MolgenError, match="scaffold"):
            model.sample(1, n_atoms=6, scaffold=bad)
