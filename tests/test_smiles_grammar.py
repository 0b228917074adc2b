"""The smiles-ar grammar mask (:mod:`molgen.models.smiles_grammar`): hand cases of rings, branches,
valences, charges, aromaticity and the end; every QM9 training string accepted; random walks under
the mask give only strictly valid molecules (RDKit adds no hydrogen) of the requested size; the
shipped model samples valid molecules."""

from __future__ import annotations

import csv
import sys

import pytest
import torch
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from molgen.errors import MolgenError
from molgen.models import smiles_grammar as G
from molgen.models.smiles_chem import VOCAB as V
from molgen.models.smiles_tokenizer import explicit_h_smiles

L = 96


def strictly_valid(smiles: str) -> bool:
    """RDKit parses the explicit-H string and adds no hydrogen, no radical."""
    _block = BlockLogs()  # noqa: F841
    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.MolFromSmiles(smiles, params)
    return mol is not None and all(a.GetNumImplicitHs() == 0 and a.GetNumRadicalElectrons() == 0
                                   for a in mol.GetAtoms())


def run_many(cases: list[tuple[str, int]]) -> list[tuple[set[str], bool]]:
    """For each ``(prefix, n)``, as one batch: the tokens allowed after ``prefix`` (grammar AND budget)
    for a molecule of ``n`` atoms, and whether every token of ``prefix`` was allowed."""
    ids = [V.encode(p) for p, _ in cases]
    B, T = len(cases), max(map(len, ids)) + 1
    tab, n = G.tables(V), torch.tensor([k for _, k in cases])
    st = G.init_state(B, int(n.max()))
    count, ok, out = torch.zeros(B, dtype=torch.long), [True] * B, [set()] * B
    for t in range(1, T + 1):
        m = G.allowed(tab, st, n, L) & G.budget_mask(V, count, n, t, L)
        tok = torch.tensor([x[t - 1] if t <= len(x) else V.pad for x in ids])
        for i, x in enumerate(ids):
            if t <= len(x):
                ok[i] &= bool(m[i, x[t - 1]])
            elif t == len(x) + 1:
                out[i] = {V.tokens[j] for j in m[i].nonzero().flatten().tolist()}
        G.advance(tab, st, tok)
        st.dead[:] = False  # read on past refused tokens: the test looks at the masks only
        count += V.is_atom[tok].long()
    return list(zip(out, ok))


def accepted(*smiles: str) -> list[bool]:
    """For each string: every token and the end are allowed."""
    res = run_many([(s, sum(bool(V.is_atom[i]) for i in V.encode(s))) for s in smiles])
    return [ok and "<eos>" in nxt for nxt, ok in res]


def test_rings_and_branches() -> None:
    r = run_many([("[H]C1([H])C([H])([H])C", 9), ("[H]C1([H])O", 7), ("[H]C1([H])C", 9), ("[H]C1", 9),
                  ("[H]C(", 5), ("[H]C([H]", 5), ("[H]C", 5), ("[H]C1([H])C([H])([H])C(", 12)])
    nxt, ok = r[0]  # cyclopropane before its last two H
    assert ok and {"1", "("} <= nxt and not {"[H]", "C", ")", "<eos>"} & nxt  # never leave ring 1 and two H behind
    assert "1" not in r[1][0]  # O is bonded to the ring's opener already
    assert "2" in r[2][0] and "1" not in r[3][0]  # no ring onto itself
    assert ")" not in r[4][0] and ")" in r[5][0] and ")" not in r[6][0]
    assert "1" not in r[7][0]  # no digit right after '('
    good = ("[H]C1([H])C([H])([H])C1([H])[H]", "[H]C12C([H])([H])C1([H])C2([H])[H]", "[H]N1C([H])([H])C1([H])[H]",
              "[H]C=1C([H])([H])C=1[H]", "[H]C1=C([H])C1([H])[H]", "[H]c1c([H])c([H])c2c([H])c([H])c([H])c([H])c2c1[H]")
    bad = ("[H]C1([H])C([H])([H])C([H])([H])[H]", "[H]C1([H])C([H])([H])C1([H])([H])[H]",  # open ring, pentavalent
           "[H]C=1C([H])([H])C1=C([H])[H]", "[H]C1([H])[H]C1")
    assert accepted(*good, *bad) == [True] * len(good) + [False] * len(bad)


def test_valences_charges_and_the_end() -> None:
    r = run_many([("[H]C([H])([H])[H]", 5), ("[H]C([H])", 4), ("[H]C([H])([H])", 6), ("[H]C", 3), ("[H]N", 3),
                  ("[H]N([H])", 4), ("[H]O", 3), ("F", 2), ("[H]C([H])[H]", 4), ("[H]C([H])([H])[H]", 10),
                  ("[H]C", 10)])
    assert r[0][0] == {"<eos>"}
    assert "=" in r[1][0] and "[H]" not in r[1][0] and "O" not in r[1][0]  # formaldehyde: only =O fits one atom
    assert not {"=", "#"} & r[2][0] and "#" in r[3][0]
    assert "=" in r[4][0] and "=" not in r[5][0] and "=" not in r[6][0] and "=" not in r[7][0]
    assert "<eos>" not in r[8][0]  # an under-bonded atom never ends a string
    assert "." not in r[9][0] | r[10][0]
    good = ("[H][N+]([H])([H])[H]", "[H][O-]", "[H]C([H])([H])C(=O)[O-]", "[H]N([H])[N+](=O)[O-]",
            "[H]C([H])([H])[N+]([H])([H])[H]", "[H]C#N", "O=C=O", "[H]OO[H]")
    bad = ("[H][N+]([H])[H]", "[H][O-][H]", "[H]N([H])([H])[H]", "[H]C([H])([H])([H])([H])[H]", "F[H]F", "[H]O[H]F",
           "[H][C+]([H])[H]")  # the last: a valid ion, but never in QM9's strings
    assert accepted(*good, *bad) == [True] * len(good) + [False] * len(bad)


def test_aromatic_atoms_need_a_kekule_structure_and_a_ring() -> None:
    good = ("[H]c1c([H])c([H])c([H])c([H])c1[H]", "[H]c1c([H])c([H])n([H])c1[H]", "[H]c1oc([H])c([H])c1[H]",
            "[H]c1c([H])c([H])[n-]c1[H]", "[H]c1c([H])c(=O)n([H])c([H])c1[H]", "[H]Oc1c([H])c([H])c([H])c([H])c1[H]",
            "[H]c1c([H])c([H])c([H])c1([H])[H]", "[H]c1c([H])c([H])c([H])c([H])c1-c1c([H])c([H])c([H])c([H])c1[H]")
    bad = ("[H]c1c([H])c([H])nc1[H]",  # five pi-needing atoms: no Kekule structure
           "[H]c1c([H])c([H])c([H])c1[H]", "[H]c1c([H])c([H])c([H])c([H])c([H])c1[H]",
           "[H]c([H])([H])[H]",  # aromatic, no ring
           "[H]c1c([H])c([H])c([H])c([H])c1=C([H])[H]")
    assert accepted(*good, *bad) == [True] * len(good) + [False] * len(bad)
    assert [strictly_valid(s) for s in good + bad] == [True] * len(good) + [False] * len(bad)


def test_every_qm9_training_string_is_accepted(qm9_small_source) -> None:
    csv.field_size_limit(sys.maxsize)
    with open(qm9_small_source / "qm9_part1.csv", newline="") as fh:
        strings = [explicit_h_smiles(row["SMILES"]) for row in csv.DictReader(fh)]
    ids = [V.encode(s) + [V.eos] for s in strings]
    T = max(map(len, ids))
    targets = torch.full((len(ids), T), V.pad)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x)
    n = V.is_atom[targets].sum(1)
    count = V.is_atom[targets].long().cumsum(1) - V.is_atom[targets].long()
    base = G.budget_mask(V, count, n[:, None].expand_as(count), torch.arange(1, T + 1)[None], L)
    masks = G.sequence_masks(G.tables(V), targets, base, n, L, V.pad)
    ok = masks.gather(2, targets[..., None])[..., 0] | (targets == V.pad)
    assert bool(ok.all()), [strings[i] for i in (~ok).any(1).nonzero().flatten().tolist()]


def random_walk(B: int, seed: int, n_max: int = 29) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Strings drawn uniformly among the allowed tokens (the cheap mask + exact bond redraw, as the
    sampler draws): the strings, their atom counts, the requested ones and which fell back to the
    budget mask (dead ends)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(3, n_max + 1, (B,), generator=g)
    tab, st = G.tables(V), G.init_state(B, n_max)
    count, done, out = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.bool), []
    died = torch.zeros(B, dtype=torch.bool)
    for t in range(1, L + 1):
        logits = torch.randn(B, len(V), generator=g)
        dead = st.dead.clone()
        pick = lambda mask, rows, u: logits[rows].masked_fill(~mask, -1e9).argmax(-1)  # noqa: E731
        nxt = G.draw(tab, st, G.budget_mask(V, count, n, t, L), n, L, pick, torch.rand(B), torch.rand(B))
        died |= st.dead & ~dead & ~done
        nxt = torch.where(done, V.pad, nxt)
        G.advance(tab, st, nxt)
        out.append(nxt)
        count += V.is_atom[nxt].long()
        done |= nxt == V.eos
        if bool(done.all()):
            break
    ids = torch.stack(out, 1)
    return [V.decode(r) for r in ids.tolist()], V.is_atom[ids].sum(1), n, died


def test_random_walks_under_the_mask_are_strictly_valid() -> None:
    smiles, counts, n, died = random_walk(160, seed=0)
    assert bool((counts == n).all())
    for s, d in zip(smiles, died.tolist()):
        assert d or strictly_valid(s), s  # sound: what the mask lets end is valid
    assert float(died.float().mean()) < 0.2  # uniform random choices, the worst case for dead ends


def test_cheap_bond_mask_is_a_superset_and_the_bond_check_is_exact() -> None:
    smiles = ["[H]c1c([H])c([H])n([H])c1[H]", "[H]C([H])([H])C(=O)[O-]", "[H]C#CC1([H])OC1([H])[H]",
              "[H]N=C1OC([H])([H])C1=O", "[H]c1nc2c([H])c([H])c([H])c([H])c2o1"]
    ids = [V.encode(x) for x in smiles]
    B, T, tab = len(ids), max(map(len, ids)), G.tables(V)
    n = torch.tensor([sum(bool(V.is_atom[i]) for i in x) for x in ids])
    st, bond = G.init_state(B, int(n.max())), tab.kind == G.BOND
    for t in range(T):
        exact, cheap = G.allowed(tab, st, n, L), G.allowed(tab, st, n, L, bonds=False)
        assert bool((cheap | ~exact).all()) and bool((cheap[:, ~bond] == exact[:, ~bond]).all())
        for k in (1, 2, 3):
            check = G.allowed(tab, st, n, L, torch.full((B,), k))
            assert bool(((check == exact[:, V.index["-=#"[k - 1]]]) | (st.pend > 0)).all())
        G.advance(tab, st, torch.tensor([x[t] if t < len(x) else V.pad for x in ids]))


def test_the_shipped_model_samples_strictly_valid_molecules() -> None:
    from molgen.generate import load_model

    model = load_model(pretrained="smiles-ar-gap")
    mols = model.sample(32, seed=2, temperature=0.8)
    assert all(strictly_valid(m.smiles) for m in mols)
    guided = model.sample(32, seed=2, temperature=0.8, cond={"gap": 6.5}, guidance=3.0)
    assert sum(strictly_valid(m.smiles) for m in guided) >= 31
    with pytest.raises(MolgenError, match="constrained"):
        model.sample(2, constrained="maybe")
