"""The graph VAE (``vae``) against independent references: closed-form KL, IWAE >= ELBO, invariance,
decoded graphs, RDKit failures, and the latent evaluation helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.loader import DataLoader

from molgen.chem.build import build_mol, sanitize
from molgen.chem.elements import ELEMENT_INDEX
from molgen.chem.molgraph import canonical_graph, embed_graph
from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.errors import MolgenError
from molgen.metrics.basic import basic_metrics, invalid_reasons
from molgen.models.registry import get_family
from molgen.models.vae import gaussian_kl
from molgen.models.vae_latent import interpolate, latent_means, latent_probe_r2, linear_probe_r2


def _tiny_vae(qm9, properties: list[str], decoder: str):
    """A tiny-preset VAE factory ``make(seed)`` and 64 training graphs."""
    family = get_family("vae")
    cfg = resolve_config("vae", family.config_cls, preset="tiny",
                         overrides={"data": {"properties": properties}, "family": {"decoder": decoder}})
    idx = select_indices(qm9, **cfg.data.selection())
    stats = compute_stats(qm9, idx["train"], cfg.data.properties)
    graphs = make_graphs(qm9, idx["train"][:64], stats)

    def make(seed: int = 0):
        torch.manual_seed(seed)
        return family(cfg, stats).eval()

    return make, graphs


@pytest.fixture(scope="module")
def tiny(qm9):
    return _tiny_vae(qm9, ["gap", "mu"], "graph")


def _batch(graphs, n):
    return next(iter(DataLoader(graphs[:n], batch_size=n)))


def test_kl_matches_closed_form_by_hand(tiny) -> None:
    make, graphs = tiny
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    logvar = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    # KL(N(mu, s^2) || N(0, 1)) = 1/2 sum(mu^2 + s^2 - 1 - log s^2), term by term
    by_hand = [0.5 * sum(m * m + math.exp(lv) - 1.0 - lv for m, lv in zip(mr.tolist(), lr.tolist()))
               for mr, lr in zip(mu, logvar)]
    assert torch.allclose(gaussian_kl(mu, logvar), torch.tensor(by_hand, dtype=torch.float64), atol=1e-12)
    # against a diagonal-Gaussian prior: sum log(sp/sq) + (sq^2 + (mq - mp)^2) / (2 sp^2) - 1/2
    mp = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    lp = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    hand = (0.5 * (lp - logvar) + (logvar.exp() + (mu - mp) ** 2) / (2 * lp.exp()) - 0.5).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar, mp, lp), hand, atol=1e-12)
    # the model's KL term is this closed form against its prior p(z | y), which starts as N(0, I)
    model = make().double()
    d = model.fc.latent_dim
    mu, logvar = mu[:, :1].expand(5, d).clone(), logvar[:, :1].expand(5, d).clone()
    y, y_mask = torch.randn(5, 2, dtype=torch.float64), torch.ones(5, 2, dtype=torch.float64)
    expected = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    assert torch.allclose(model.kl(mu, logvar, y, y_mask), expected, atol=1e-10)
    with torch.no_grad():
        torch.nn.init.normal_(model.to_prior.weight)
    _, mp, lp = model.prior(y, y_mask)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(mp, (0.5 * lp).exp())).sum(-1)
    assert torch.allclose(model.kl(mu, logvar, y, y_mask), ref, atol=1e-8)


def test_elbo_below_importance_weighted_bound(tiny) -> None:
    make, graphs = tiny
    model = make()
    batch = _batch(graphs, 6)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.log_likelihood(batch) for _ in range(32)])  # [32, 6]
        iwae = torch.stack([model.log_likelihood_iw(batch, 16) for _ in range(4)])
    assert torch.isfinite(elbo).all() and torch.isfinite(iwae).all()
    assert elbo.shape == (32, 6) and iwae.shape == (4, 6)
    assert elbo.mean() <= iwae.mean()


def test_encoder_latent_invariant_under_rotation_reflection_translation(tiny) -> None:
    make, graphs = tiny
    model = make().double()
    batch = _batch(graphs, 5)
    batch.pos = batch.pos.double()
    moved = batch.clone()
    rot = -o3.rand_matrix(dtype=torch.float64)  # a rotation times the inversion
    moved.pos = batch.pos @ rot.T + torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        mu_a, lv_a = model.encode(batch)
        mu_b, lv_b = model.encode(moved)
    assert torch.allclose(mu_a, mu_b, atol=1e-9) and torch.allclose(lv_a, lv_b, atol=1e-9)
    assert not torch.allclose(mu_a[0], mu_a[1])  # and it does depend on the molecule


def _perturbed(make):
    """A model whose bond head emits many bonds (an untrained one starts with none)."""
    model = make()
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder.bond_out.weight, std=2.0)
    return model


def test_decoded_bonds_symmetric_zero_diagonal(tiny) -> None:
    make, _ = tiny
    model = _perturbed(make)
    mols = model.sample(6, n_atoms=[3, 7, 12, 18, 25, 29], seed=1)
    assert sum(int((m.bonds > 0).sum()) for m in mols) > 0
    for m in mols:
        n = m.num_atoms
        assert m.bonds.shape == (n, n) and m.positions.shape == (n, 3)
        assert (m.bonds == m.bonds.T).all() and (np.diag(m.bonds) == 0).all()
        assert set(np.unique(m.bonds)) <= {0, 1, 2, 3}
        assert set(np.unique(m.charges)) <= {-1, 0, 1}
        # a graph RDKit rejects has no coordinates (but keeps its bonds)
        if sanitize(build_mol(m))[0] is None:
            assert not m.has_coordinates


def test_unembeddable_molecule_keeps_bonds_and_is_judged_by_them(tiny, monkeypatch) -> None:
    H, C = ELEMENT_INDEX["H"], ELEMENT_INDEX["C"]
    # CH4 embeds; ETKDG keeps the 5 explicit atoms and gives C-H ~ 1.09 Å
    star = np.zeros((5, 5), dtype=np.int64)
    star[0, 1:] = star[1:, 0] = 1
    methane = embed_graph(np.array([C, H, H, H, H]), None, star, seed=0)
    assert methane.has_coordinates and methane.num_atoms == 5
    assert np.allclose(np.linalg.norm(methane.positions[1:] - methane.positions[0], axis=1), 1.09, atol=0.05)
    # pentavalent carbon: RDKit cannot sanitize it -> NaN positions, bonds kept, invalid by its bonds
    star5 = np.zeros((6, 6), dtype=np.int64)
    star5[0, 1:] = star5[1:, 0] = 1
    bad = embed_graph(np.array([C] + [H] * 5), np.zeros(6, dtype=np.int64), star5, seed=0)
    assert not bad.has_coordinates and (bad.bonds == star5).all() and bad.num_atoms == 6
    assert basic_metrics([bad])["validity"] == 0.0
    assert invalid_reasons([bad]) == {"valence": 1}
    # a valid graph whose embedding fails: NaN positions, but valid by its bonds
    from rdkit.Chem import rdDistGeom

    monkeypatch.setattr(rdDistGeom, "EmbedMolecule", lambda *a, **k: -1)
    failed = embed_graph(np.array([C, H, H, H, H]), None, star, seed=0)
    assert not failed.has_coordinates and (failed.bonds == star).all()
    assert basic_metrics([failed])["validity"] == 1.0
    # the same through the model: every molecule keeps its graph, metrics come out as with coordinates
    make, _ = tiny
    model = _perturbed(make)
    mols = model.sample(5, n_atoms=[4, 6, 9, 12, 15], seed=3)
    assert not any(m.has_coordinates for m in mols)
    monkeypatch.undo()
    again = _perturbed(make).sample(5, n_atoms=[4, 6, 9, 12, 15], seed=3)
    for a, b in zip(mols, again):
        assert (a.bonds == b.bonds).all() and (a.atom_types == b.atom_types).all()
    assert basic_metrics(mols)["validity"] == basic_metrics(again)["validity"]


def test_linear_probe_r2_on_exact_and_unrelated_targets() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=gen)
    w = torch.randn(8, 2, generator=gen)
    exact = x @ w + torch.tensor([3.0, -1.0])
    r2 = linear_probe_r2(x, exact)
    assert r2.shape == (2,) and (r2 > 1 - 1e-9).all()
    noise = torch.randn(200, generator=gen)
    assert float(linear_probe_r2(x, noise)[0]) < 0.2


def test_latent_probe_r2_recovers_a_linear_function_of_the_latent(tiny) -> None:
    make, graphs = tiny
    model = make()
    mu, labels = latent_means(model, graphs)
    assert mu.shape == (64, model.fc.latent_dim) and labels.shape == (64, 2)
    w = torch.randn(mu.shape[1], generator=torch.Generator().manual_seed(1))
    out = latent_probe_r2(model, graphs, {"synthetic": (mu.double() @ w.double() + 2.0).numpy()})
    assert out["synthetic"] == pytest.approx(1.0, abs=1e-6)
    # the model's own labels, read from the graphs
    assert set(latent_probe_r2(model, DataLoader(graphs, batch_size=16))) == {"gap", "mu"}


def test_interpolate_decodes_the_line_between_two_latents(tiny) -> None:
    make, graphs = tiny
    model = make()
    a, b = graphs[0], graphs[1]
    mols = interpolate(model, a, b, steps=4)
    na, nb = a.num_nodes, b.num_nodes
    assert [m.num_atoms for m in mols] == [round(na + t * (nb - na)) for t in (0, 1 / 3, 2 / 3, 1)]
    assert [m.properties["interpolation_t"] for m in mols] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    # the ends decode the two latent means
    mu, _ = latent_means(model, [a, b])
    ends = model.decode_latents(mu, torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([na, nb]), seeds=[0, 3])
    for m, e in zip((mols[0], mols[-1]), ends):
        assert (m.atom_types == e.atom_types).all() and (m.bonds == e.bonds).all()


def test_canonical_graph_order_kekule_and_hydrogens(tiny) -> None:
    g1, g2 = canonical_graph("OCC"), canonical_graph("C(O)C")
    assert g1.num_atoms == 9  # C2H6O with explicit hydrogens
    assert (g1.atom_types == g2.atom_types).all() and (g1.bond_matrix() == g2.bond_matrix()).all()
    types = g1.atom_types.tolist()
    assert types[:3].count(ELEMENT_INDEX["H"]) == 0 and set(types[3:]) == {ELEMENT_INDEX["H"]}
    benzene = canonical_graph("c1ccccc1").bond_matrix()
    ring = benzene[:6, :6]
    assert sorted(ring[np.triu_indices(6, 1)].tolist()).count(2) == 3 and ring.max() == 2
    assert canonical_graph("not a smiles") is None
    # the training targets of real QM9 graphs: the SMILES's atoms are the geometry's atoms
    make, graphs = tiny
    batch = _batch(graphs, 8)
    targets = make().graph_targets(batch)
    for b in range(8):
        n = int(targets.counts[b])
        data_types = sorted(batch.atom_types[batch.batch == b].tolist())
        assert sorted(targets.types[b, :n].tolist()) == data_types
        assert (targets.bonds[b] == targets.bonds[b].T).all()


def test_disconnected_fragments_do_not_overlap() -> None:
    C, O, H = ELEMENT_INDEX["C"], ELEMENT_INDEX["O"], ELEMENT_INDEX["H"]
    g = canonical_graph("C.O")
    mol = embed_graph(g.atom_types, g.charges, g.bond_matrix(), seed=0)
    assert mol.has_coordinates and mol.num_atoms == 8
    d = np.linalg.norm(mol.positions[:, None] - mol.positions[None], axis=-1)
    assert d[np.triu_indices(8, 1)].min() > 0.9  # no two atoms on top of each other
    assert set(mol.atom_types.tolist()) == {C, O, H}


# ---------------------------------------------------------------------- the smiles decoder
@pytest.fixture(scope="module")
def tiny_smiles(qm9):
    return _tiny_vae(qm9, ["gap"], "smiles")


def test_smiles_decoder_samples_are_strictly_valid_with_the_requested_atoms(tiny_smiles) -> None:
    make, _ = tiny_smiles
    model = make()
    counts = [5, 9, 12, 17, 21, 25, 29, 8]
    mols = model.sample(8, n_atoms=counts, cond={"gap": 6.5}, seed=4, guidance=1.0)
    assert [m.num_atoms for m in mols] == counts
    # an untrained decoder draws near-uniform tokens: the grammar mask alone makes them valid
    assert basic_metrics(mols, explicit_hydrogens=True)["validity"] >= 7 / 8
    again = make().sample(8, n_atoms=counts, cond={"gap": 6.5}, seed=4, guidance=1.0)
    assert [m.smiles for m in mols] == [m.smiles for m in again]
    with pytest.raises(MolgenError, match="temperature"):
        model.sample(2, temperature=0.0)


def test_smiles_decoder_elbo_below_iwae_and_finite(tiny_smiles) -> None:
    make, graphs = tiny_smiles
    model = make()
    batch = _batch(graphs, 3)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.log_likelihood(batch) for _ in range(4)])
        iwae = torch.stack([model.log_likelihood_iw(batch, 8) for _ in range(2)])
    assert torch.isfinite(elbo).all() and torch.isfinite(iwae).all()
    assert elbo.mean() <= iwae.mean()


def test_smiles_decoder_uses_the_latent_no_posterior_collapse(tiny_smiles) -> None:
    """Overfit 8 molecules: greedy decoding of each posterior mean gives back its own molecule, so
    the latent carries the molecule (a collapsed VAE decodes every latent to the same string)."""
    from rdkit import Chem

    make, graphs = tiny_smiles
    model = make().train()
    batch = _batch(graphs, 8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(250):
        loss = model.loss(batch)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first
    model.eval()
    mu, _ = model.encode(batch)
    counts = torch.bincount(batch.batch)
    y, y_mask = model.labels(batch, train=False)
    mols = model.decode_latents(mu, y, y_mask, counts, seeds=list(range(8)), top_k=1)
    canon = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in batch.smiles]
    got = [Chem.MolToSmiles(Chem.MolFromSmiles(m.smiles)) if Chem.MolFromSmiles(m.smiles) else None for m in mols]
    assert sum(a == b for a, b in zip(canon, got)) >= 6
    assert len(set(got)) >= 6


def test_smiles_decoder_tiny_run_samples_are_valid_and_unique(tiny_smiles) -> None:
    """The collapse check on a tiny run: after a few steps on 64 molecules, prior samples are strictly
    valid and distinct (the one-shot decoder's 300-step samples were 4.5 % unique, none strictly valid)."""
    from molgen.metrics.gdss import judge

    make, graphs = tiny_smiles
    model = make().train()
    batch = _batch(graphs, 64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(40):
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    mols = model.eval().sample(16, seed=0)
    ids = [judge(m).smiles for m in mols]
    valid = [i for i in ids if i is not None]
    # a barely trained model reaches the grammar's rare dead ends more often (smiles_grammar: ~10 % for
    # a random model, 0.3-0.8 % for the demo-size VAE after one epoch): they are counted invalid
    assert len(valid) >= 12
    assert len(set(valid)) >= 0.9 * len(valid)
