"""The ``ebm`` family against independent references: rotated inputs, a Gaussian's closed-form
variance, the product-of-experts formula computed by hand, and MALA's Metropolis-Hastings ratio."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.loader import DataLoader

from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.errors import MolgenError
from molgen.models.base import SampleChunk
from molgen.models.ebm import EnergyBasedModel
from molgen.models.registry import get_family
from molgen.nn.graph import remove_mean, scatter_sum
from molgen.sampling.langevin import mala_log_accept


def _setup(qm9, properties=("gap", "mu"), family=None):
    cls = get_family("ebm")
    overrides = {"data": {"properties": list(properties)}}
    if family:
        overrides["family"] = family
    cfg = resolve_config("ebm", cls.config_cls, preset="tiny", overrides=overrides)
    idx = select_indices(qm9, **cfg.data.selection())
    stats = compute_stats(qm9, idx["train"], cfg.data.properties)
    torch.manual_seed(0)
    model = cls(cfg, stats)
    batch = next(iter(DataLoader(make_graphs(qm9, idx["train"][:6], stats), batch_size=6)))
    return model, batch


def _condition_matters(model: EnergyBasedModel) -> EnergyBasedModel:
    """FiLM starts at zero (labels have no effect at initialization): give it random weights."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in model.net.backbone.layers:
            for p in layer.film.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def _noisy_state(model: EnergyBasedModel, batch, sigma: float = 0.3):
    """A double-precision noisy ``(x, h)`` of the batch (off the data, where the energy is generic)."""
    gen = torch.Generator().manual_seed(1)
    x = model.positions(batch).double()
    h = model.features(batch).double()
    x = remove_mean(x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype), batch.batch, batch.num_graphs)
    h = h + sigma * torch.randn(h.shape, generator=gen, dtype=h.dtype)
    return x, h


def _random_orthogonal(reflect: bool, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def test_energy_invariant_and_gradient_equivariant(qm9) -> None:
    model, batch = _setup(qm9)
    model = _condition_matters(model).double().eval()
    B, idx = batch.num_graphs, batch.batch
    x, h = _noisy_state(model, batch)
    y, mask = batch.y.view(B, -1).double(), batch.y_mask.view(B, -1).double()
    gen = torch.Generator().manual_seed(3)

    def energy_grad(pos, sigma):
        pos = pos.clone().requires_grad_(True)
        feats = h.clone().requires_grad_(True)
        e = model.energy(pos, feats, torch.full((B,), sigma, dtype=torch.float64), idx, B, y, mask)
        gx, gh = torch.autograd.grad(e.sum(), (pos, feats))
        return e.detach(), gx, gh

    for sigma in (0.02, 0.5, 5.0):
        e, gx, gh = energy_grad(x, sigma)
        assert e.shape == (B,) and torch.isfinite(e).all()
        # translation invariance in full coordinates: the position gradient sums to zero per molecule
        assert scatter_sum(gx, idx, B).abs().max() < 1e-8 * (1 + gx.abs().max())
        for reflect in (False, True):
            rot = _random_orthogonal(reflect, gen)
            shift = torch.randn(3, generator=gen, dtype=torch.float64) * 3.0
            e2, gx2, gh2 = energy_grad(x @ rot.T + shift, sigma)
            assert torch.allclose(e2, e, rtol=1e-9, atol=1e-9)
            assert torch.allclose(gx2, gx @ rot.T, rtol=1e-7, atol=1e-9)
            assert torch.allclose(gh2, gh, rtol=1e-7, atol=1e-9)


def test_annealed_mala_samples_a_gaussian_with_its_variance(qm9, monkeypatch) -> None:
    """Exact quadratic energy of N(0, s_x^2) positions (zero-CoM) and N(mu, s_h^2) features."""
    model, _ = _setup(qm9, family={"mala": True, "denoise": False, "steps_per_level": 10})
    s_x, s_h, mu = 0.7, 0.4, 0.3

    def gaussian_energy(x, h, sigma, batch, num_graphs, y, y_mask):
        xc = remove_mean(x, batch, num_graphs)
        return (scatter_sum((xc**2).sum(-1), batch, num_graphs) / (2 * s_x**2)
                + scatter_sum(((h - mu) ** 2).sum(-1), batch, num_graphs) / (2 * s_h**2))

    monkeypatch.setattr(model, "energy", gaussian_energy)
    n_mol, n_atoms = 300, 4
    counts = torch.full((n_mol,), n_atoms)
    y, mask = model.resolve_cond(n_mol, None)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, h = model.sample_state(SampleChunk(counts, y, mask), model.sample_options(steps=600), gen, False)
    idx = torch.repeat_interleave(torch.arange(n_mol), n_atoms)
    assert scatter_sum(x, idx, n_mol).abs().max() < 1e-4  # zero centre of mass
    # positions: E|x|^2 = s_x^2 (n - 1) 3 per molecule on the zero-CoM subspace
    var_x = float((x**2).sum()) / (n_mol * (n_atoms - 1) * 3)
    var_h = float(((h - mu) ** 2).mean())
    assert abs(var_x / s_x**2 - 1) < 0.1, var_x
    assert abs(var_h / s_h**2 - 1) < 0.1, var_h
    assert abs(float(h.mean()) - mu) < 0.05
    assert model.last_acceptance is not None and 0.05 < model.last_acceptance <= 1.0


def _masked(y, mask, keep):
    m = mask.clone()
    m[:, [j for j in range(mask.shape[1]) if j not in keep]] = 0.0
    return y * m, m


@pytest.mark.parametrize("w", [0.0, 0.7])
def test_product_composition_matches_the_formula(qm9, w: float) -> None:
    model, batch = _setup(qm9)
    model = _condition_matters(model).double().eval()
    B, idx = batch.num_graphs, batch.batch
    x, h = _noisy_state(model, batch)
    sigma = torch.full((B,), 0.2, dtype=torch.float64)
    y = torch.randn(B, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mask = torch.ones(B, 2, dtype=torch.float64)
    mask[0, 1] = 0.0  # molecule 0: gap only (P = 1)
    mask[1] = 0.0  # molecule 1: no target (P = 0)
    with torch.no_grad():
        e_gap = model.energy(x, h, sigma, idx, B, *_masked(y, mask, [0]))
        e_mu = model.energy(x, h, sigma, idx, B, *_masked(y, mask, [1]))
        e_none = model.energy(x, h, sigma, idx, B, torch.zeros_like(y), torch.zeros_like(mask))
        e_joint = model.energy(x, h, sigma, idx, B, y * mask, mask)
        got = model.composed_energy(x, h, sigma, idx, B, y, mask, guidance=w, composition="product")
        joint = model.composed_energy(x, h, sigma, idx, B, y, mask, guidance=w, composition="joint")
    # by hand: each expert guided, product of experts divided by the (P - 1)-fold prior
    P = mask.sum(1)
    expert_gap = (1 + w) * e_gap - w * e_none
    expert_mu = (1 + w) * e_mu - w * e_none
    want = mask[:, 0] * expert_gap + mask[:, 1] * expert_mu - (P - 1) * e_none
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    assert (got[2:] - joint[2:]).abs().min() > 1e-6  # the labels matter: product is not joint
    assert torch.allclose(got[2:], (expert_gap + expert_mu - e_none)[2:], rtol=1e-10, atol=1e-10)
    assert torch.allclose(got[1], e_none[1]) and torch.allclose(joint[1], e_none[1])
    assert torch.allclose(joint, (1 + w) * e_joint - w * e_none, rtol=1e-10, atol=1e-10)
    # its gradient is the gradient of the same formula
    _, (gx, gh) = model.energy_and_grad(x, h, sigma, idx, B, y, mask, guidance=w, composition="product")
    xr, hr = x.clone().requires_grad_(True), h.clone().requires_grad_(True)
    ref = (mask[:, 0] * ((1 + w) * model.energy(xr, hr, sigma, idx, B, *_masked(y, mask, [0])))
           + mask[:, 1] * ((1 + w) * model.energy(xr, hr, sigma, idx, B, *_masked(y, mask, [1])))
           - (P - 1 + w * P) * model.energy(xr, hr, sigma, idx, B, torch.zeros_like(y), torch.zeros_like(mask)))
    rx, rh = torch.autograd.grad(ref.sum(), (xr, hr))
    assert torch.allclose(gx, rx, rtol=1e-8, atol=1e-10) and torch.allclose(gh, rh, rtol=1e-8, atol=1e-10)


def test_mala_acceptance_tends_to_one_for_small_exact_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    B, n = 5, 4
    batch = torch.repeat_interleave(torch.arange(B), n)
    prec = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5  # quadratic energy, diagonal precision

    def energy_grad(z):
        return scatter_sum((0.5 * prec * z**2).sum(-1), batch, B), prec * z

    z = torch.randn(B * n, 3, generator=gen, dtype=torch.float64)
    e, g = energy_grad(z)
    prev = None
    for step in (1e-2, 1e-4, 1e-6, 1e-8):
        xi = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        z_new = z - 0.5 * step * g + math.sqrt(step) * xi
        e_new, g_new = energy_grad(z_new)
        log_a = mala_log_accept(e, e_new, (z,), (z_new,), (g,), (g_new,), step, batch, B)
        assert (log_a <= 0).all()
        gap = float(-log_a.min())
        if prev is not None:
            assert gap <= prev + 1e-12
        prev = gap
    assert prev < 1e-6


def test_mala_ratio_matches_normalized_densities() -> None:
    """The MH ratio against exp(-E) and Gaussian proposal densities from torch.distributions."""
    gen = torch.Generator().manual_seed(1)
    B, n, step = 3, 5, 0.3
    batch = torch.repeat_interleave(torch.arange(B), n)

    def energy_grad(z):  # a non-quadratic energy
        zz = z.clone().requires_grad_(True)
        e = scatter_sum((0.25 * zz**4 + zz).sum(-1), batch, B)
        return e.detach(), torch.autograd.grad(e.sum(), zz)[0]

    z = torch.randn(B * n, 2, generator=gen, dtype=torch.float64)
    z_new = torch.randn(B * n, 2, generator=gen, dtype=torch.float64)
    e, g = energy_grad(z)
    e_new, g_new = energy_grad(z_new)
    normal = torch.distributions.Normal
    log_fwd = normal(z - 0.5 * step * g, math.sqrt(step)).log_prob(z_new).sum(-1)
    log_bwd = normal(z_new - 0.5 * step * g_new, math.sqrt(step)).log_prob(z).sum(-1)
    want = (-e_new + e + scatter_sum(log_bwd - log_fwd, batch, B)).clamp(max=0.0)
    got = mala_log_accept(e, e_new, (z,), (z_new,), (g,), (g_new,), step, batch, B)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_training_backpropagates_through_the_energy_gradient(qm9) -> None:
    model, batch = _setup(qm9)
    out = model.loss(batch)
    assert {"loss", "loss_x", "loss_h"} <= set(out) and torch.isfinite(out["loss"])
    out["loss"].backward()
    # the parameters reach the loss only through grad E (create_graph=True)
    grads = [p.grad for p in model.net.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():  # validation runs the loss under no_grad
        assert torch.isfinite(model.loss(batch)["loss"])
    assert model.log_likelihood(batch) is None


def test_sample_options_reach_the_sampler(qm9, monkeypatch) -> None:
    model, _ = _setup(qm9)
    model.eval()
    seen: list[str] = []
    original = model.composed_energy

    def recording(*args, **kwargs):
        seen.append(args[-1] if len(args) == 9 else kwargs.get("composition", "joint"))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "composed_energy", recording)
    # as the CLI passes them: --target gap=6.5 --target mu=2 --sample-opt composition=product mala=true
    mols = model.sample(3, cond={"gap": 6.5, "mu": 2.0}, n_atoms=[4, 6, 5], steps=4, seed=0,
                        composition="product", mala="true", steps_per_level="2")
    assert [m.num_atoms for m in mols] == [4, 6, 5] and mols[0].properties["target_gap"] == 6.5
    assert seen and set(seen) == {"product"}
    assert model.last_acceptance is not None
    seen.clear()
    model.sample(2, cond={"gap": 6.5}, n_atoms=4, steps=3, seed=0, guidance=1.0)
    assert set(seen) == {"joint"}  # the family default
    with pytest.raises(MolgenError, match="composition must be one of"):
        model.sample(2, n_atoms=4, steps=3, composition="sum")
    with pytest.raises(MolgenError, match=r"does not take sampler option\(s\) temperature"):
        model.sample(2, n_atoms=4, steps=3, temperature=0.5)
    with pytest.raises(MolgenError, match="composition must be one of"):
        _setup(qm9, family={"composition": "mixture"})


def test_product_default_from_config_and_seeded_samples(qm9) -> None:
    model, _ = _setup(qm9, family={"composition": "product"})
    _condition_matters(model).eval()
    a = model.sample(2, cond={"gap": 6.5, "mu": 2.0}, n_atoms=5, steps=4, seed=7)
    b = model.sample(2, cond={"gap": 6.5, "mu": 2.0}, n_atoms=5, steps=4, seed=7, composition="product")
    c = model.sample(2, cond={"gap": 6.5, "mu": 2.0}, n_atoms=5, steps=4, seed=7, composition="joint")
    assert all((m1.positions == m2.positions).all() for m1, m2 in zip(a, b))
    assert any((m1.positions != m3.positions).any() for m1, m3 in zip(a, c))
