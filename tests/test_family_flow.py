"""``flow`` (E-NF continuous normalizing flow) against independent references: closed-form Gaussians,
finite differences, brute-force Jacobian determinants and rotated/translated molecules."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3
from torch import nn
from torch_geometric.loader import DataLoader

from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.models.flow import ArgmaxDequantizer, EquivariantFlow
from molgen.nn.graph import remove_mean
from molgen.sampling import ode


def _flow(qm9, n_mols: int = 4, properties=("gap",), max_atoms: int | None = None, **family):
    """A tiny-preset flow and a batch of ``n_mols`` training molecules (with at most ``max_atoms``
    atoms: the exact trace and brute-force Jacobians cost a product per atom slot)."""
    cfg = resolve_config("flow", EquivariantFlow.config_cls, preset="tiny",
                         overrides={"data": {"properties": list(properties)}, "family": family})
    idx = select_indices(qm9, **cfg.data.selection())
    chosen = idx["train"]
    if max_atoms is not None:  # QM9's first molecules are the smallest
        chosen = torch.nonzero(qm9.n_atoms <= max_atoms).flatten()
    stats = compute_stats(qm9, torch.cat([idx["train"], chosen[:n_mols]]), cfg.data.properties)
    torch.manual_seed(0)
    model = EquivariantFlow(cfg, stats)
    batch = next(iter(DataLoader(make_graphs(qm9, chosen[:n_mols], stats), batch_size=n_mols)))
    return model, batch, stats


def _to_double(model, batch):
    model = model.double()
    batch.pos, batch.y, batch.y_mask = batch.pos.double(), batch.y.double(), batch.y_mask.double()
    return model, batch


def _log_p_n(stats, n_atoms: torch.Tensor) -> torch.Tensor:
    hist = torch.tensor(stats.n_atoms_hist, dtype=torch.float64)
    return torch.log(hist[n_atoms] / hist.sum())


class LinearField(nn.Module):
    """``v_x = a x`` (zero-CoM in, zero-CoM out), ``v_h = h A^T``: the CNF maps a Gaussian to a Gaussian."""

    def __init__(self, a: float, A: torch.Tensor) -> None:
        super().__init__()
        self.a, self.A = a, nn.Parameter(A)

    def forward(self, zx, zh, t, batch, num_graphs, y, y_mask):
        return self.a * remove_mean(zx, batch, num_graphs), zh @ self.A.T


@pytest.mark.parametrize("a", [0.0, -0.4])
def test_linear_or_zero_field_gives_the_closed_form_gaussian_density(qm9, a: float) -> None:
    """Uniform dequantization, field replaced by a linear one (zero for a = 0, A = 0): log p is the
    standard normal density of exp(a) x and h exp(A)^T + the log-det + the dequantization terms."""
    model, batch, stats = _flow(qm9, n_mols=2, max_atoms=9, dequantization="uniform", likelihood_steps=8,
                                solver="rk4", exact_trace=True)
    model, batch = _to_double(model, batch)
    K, T = model.feat_dim, model.num_types
    A = torch.zeros(K, K, dtype=torch.float64) if a == 0.0 else 0.2 * torch.randn(K, K, dtype=torch.float64)
    model.net = LinearField(a, A)
    torch.manual_seed(7)
    got = model.log_likelihood(batch)

    # reference: replay the two uniform draws (types, then charges) of the dequantization
    torch.manual_seed(7)
    N, B = batch.pos.shape[0], batch.num_graphs
    u_types = torch.rand(N, T, dtype=torch.float64)
    u_charges = torch.rand(N, dtype=torch.float64)
    onehot = nn.functional.one_hot(batch.atom_types, T).double()
    h = torch.cat([(onehot + u_types - 0.5) * model.fc.type_scale,
                   ((batch.charges.double() + u_charges - 0.5) * model.fc.charge_scale)[:, None]], dim=-1)
    x = remove_mean(batch.pos, batch.batch, B)
    n = torch.bincount(batch.batch, minlength=B)
    x1, h1 = math.exp(a) * x, h @ torch.linalg.matrix_exp(A).T
    sq = torch.zeros(B, dtype=torch.float64).index_add_(0, batch.batch, (x1 ** 2).sum(-1) + (h1 ** 2).sum(-1))
    dof = (n - 1) * 3 + n * K
    log_normal = -0.5 * sq - 0.5 * dof * math.log(2 * math.pi)
    log_det = (n - 1) * 3 * a + n * torch.trace(A)
    scale = n * (T * math.log(model.fc.type_scale) + math.log(model.fc.charge_scale))
    ref = log_normal + log_det + scale + _log_p_n(stats, n)
    assert torch.allclose(got, ref, atol=1e-6), (got, ref)


def test_zero_initialized_flow_is_the_identity(qm9) -> None:
    """``zero_init``: log p is the standard normal density of the dequantized data (+ terms), and
    sampling returns the prior draws unchanged."""
    # Hutchinson's estimate of a zero field's divergence is exactly 0 (and cheap)
    model, batch, stats = _flow(qm9, dequantization="uniform", exact_trace=False)
    model, batch = _to_double(model, batch)
    torch.manual_seed(3)
    x, h, deq = model.dequantize(batch)
    torch.manual_seed(3)
    got = model.log_likelihood(batch)
    n = torch.bincount(batch.batch)
    dof = (n - 1) * 3 + n * model.feat_dim
    sq = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.batch,
                                                                     (x ** 2).sum(-1) + (h ** 2).sum(-1))
    ref = -0.5 * sq - 0.5 * dof * math.log(2 * math.pi) - deq + _log_p_n(stats, n)
    assert torch.allclose(got, ref, atol=1e-8)

    model = model.float()
    counts = torch.tensor([4, 7])
    mols = model.sample(2, n_atoms=counts, steps=3, seed=11)
    idx, zx, zh = model.prior(counts, torch.Generator().manual_seed(11))
    assert torch.allclose(torch.cat([torch.as_tensor(m.positions) for m in mols]).float(), zx, atol=1e-6)
    assert (torch.cat([torch.as_tensor(m.atom_types) for m in mols]) == zh[:, :model.num_types].argmax(-1)).all()


def test_argmax_dequantizer_density_and_decoding() -> None:
    """``log q(v | c)`` equals the brute-force change of variables from the Gaussian ``u``, and
    argmax decoding recovers the type."""
    torch.manual_seed(0)
    T = 5
    deq = ArgmaxDequantizer(T).double()
    with torch.no_grad():
        deq.mu.normal_()
        deq.log_sigma.normal_(std=0.3)
    types = torch.tensor([0, 3, 1, 4, 2, 2, 0])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    torch.manual_seed(5)
    v, log_q = deq(types, batch, 2, torch.float64)
    assert (v.argmax(-1) == types).all()
    torch.manual_seed(5)
    eps = torch.randn(len(types), T, dtype=torch.float64)
    ref = torch.zeros(2, dtype=torch.float64)
    for i, c in enumerate(types.tolist()):
        mu, sigma = deq.mu[c].detach(), deq.log_sigma[c].detach().exp()
        u = mu + sigma * eps[i]

        def g(u, c=c):  # the thresholding map
            others = u[c] - nn.functional.softplus(u[c] - u)
            return torch.where(torch.arange(T) == c, u, others)

        assert torch.allclose(g(u), v[i].detach())
        J = torch.autograd.functional.jacobian(g, u)
        log_n = torch.distributions.Normal(mu, sigma).log_prob(u).sum()
        ref[batch[i]] += log_n - torch.linalg.slogdet(J)[1]
    assert torch.allclose(log_q.detach(), ref, atol=1e-10)


def test_dequantized_features_decode_to_the_molecule(qm9) -> None:
    for mode in ("argmax", "uniform"):
        model, batch, _ = _flow(qm9, dequantization=mode)
        x, h, _ = model.dequantize(batch)
        mols = model.decode(x, h, torch.bincount(batch.batch))
        assert (torch.cat([torch.as_tensor(m.atom_types) for m in mols]) == batch.atom_types).all()
        assert (torch.cat([torch.as_tensor(m.charges) for m in mols]) == batch.charges).all()


@pytest.mark.parametrize("exact", [True, False])
def test_differentiable_log_likelihood_gradients_match_finite_differences(exact: bool) -> None:
    """Toy linear field: d log p / d (parameters, data) through the solver == central differences
    (of the inference path for the exact trace; of the same fixed probe for Hutchinson)."""
    torch.manual_seed(0)
    counts = torch.tensor([3, 4])
    batch = torch.repeat_interleave(torch.arange(2), counts)
    B, K = 2, 3
    a = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    A = (0.3 * torch.randn(K, K, dtype=torch.float64)).requires_grad_(True)
    x0 = remove_mean(torch.randn(7, 3, dtype=torch.float64), batch, B)
    h0 = torch.randn(7, K, dtype=torch.float64).requires_grad_(True)
    dims = [(counts - 1) * 3, counts * K]
    noise = None if exact else (remove_mean(torch.randn(7, 3, dtype=torch.float64), batch, B),
                                torch.randn(7, K, dtype=torch.float64))
    weights = torch.tensor([1.0, -0.7], dtype=torch.float64)

    def objective(a, A, h0, differentiable):
        def field(t, z):  # time-dependent, nonlinear in the parameters
            x, h = z
            return a * (1 + t) * remove_mean(x, batch, B), torch.tanh(h) @ A.T + t * h
        if differentiable or not exact:
            ll = ode.log_likelihood(field, (x0, h0), batch, B, dims, t_data=0.0, t_prior=1.0, steps=4,
                                    method="heun", exact=exact, differentiable=True, noise=noise)
        else:
            ll = ode.log_likelihood(field, (x0, h0), batch, B, dims, t_data=0.0, t_prior=1.0, steps=4,
                                    method="heun", exact=True)
        return (weights * ll).sum()

    value = objective(a, A, h0, True)
    grads = torch.autograd.grad(value, (a, A, h0))
    with torch.no_grad():
        assert torch.allclose(value, objective(a, A, h0, False), atol=1e-12)  # same value as inference
    step = 1e-6
    for which, (param, grad) in enumerate(zip((a, A, h0), grads)):
        flat = param.detach().clone().flatten()
        for j in range(min(flat.numel(), 9)):  # a, all of A, the first 3 atoms of h0
            args = [a.detach(), A.detach(), h0.detach()]
            plus, minus = flat.clone(), flat.clone()
            plus[j] += step
            minus[j] -= step
            args[which] = plus.view_as(param)
            f_plus = objective(*args, False)
            args[which] = minus.view_as(param)
            f_minus = objective(*args, False)
            fd = (f_plus - f_minus) / (2 * step)
            assert abs(float(fd) - float(grad.flatten()[j])) < 1e-6 * (1 + abs(float(fd))), (param.shape, j)


def test_default_log_likelihood_still_detaches() -> None:
    """The inference path keeps no graph (other families rely on it)."""
    A = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    batch = torch.zeros(3, dtype=torch.long)
    ll = ode.log_likelihood(lambda t, z: (z[0] @ A.T,), (torch.randn(3, 2, dtype=torch.float64),), batch, 1,
                            [torch.tensor([6])], t_data=0.0, t_prior=1.0, steps=2)
    assert not ll.requires_grad


def _brute_force_log_likelihood(model, batch, stats, steps: int) -> float:
    """log N(T(w)) + log|det dT/dw| - dequantization + log p(N) for one molecule, with T the whole
    RK4 solver map on zero-CoM coordinates ``w`` and its Jacobian taken by autograd."""
    torch.manual_seed(1)
    x, h, deq = model.dequantize(batch)
    n, K = x.shape[0], model.feat_dim
    y, y_mask = model.labels(batch, train=False)
    field = model.velocity(torch.zeros(n, dtype=torch.long), 1, y, y_mask)
    # orthonormal basis of {w in R^n : sum w = 0}, used on each of the 3 axes
    Q = torch.linalg.qr(torch.eye(n, dtype=torch.float64) - 1.0 / n)[0][:, : n - 1]
    assert torch.allclose(Q @ (Q.T @ x), x, atol=1e-12)

    def flow_map(w):
        wx, wh = w[: (n - 1) * 3].view(n - 1, 3), w[(n - 1) * 3:].view(n, K)
        x1, h1 = ode.odeint(field, (Q @ wx, wh), 0.0, 1.0, steps, "rk4")
        return torch.cat([(Q.T @ x1).flatten(), h1.flatten()])

    w0 = torch.cat([(Q.T @ x).flatten(), h.flatten()]).detach()
    log_det = torch.linalg.slogdet(torch.autograd.functional.jacobian(flow_map, w0))[1]
    assert abs(float(log_det)) > 0.2  # the field does something
    log_normal = torch.distributions.Normal(0.0, 1.0).log_prob(flow_map(w0).detach()).sum()
    return float(log_normal + log_det - deq[0] + _log_p_n(stats, torch.tensor([n]))[0])


def test_exact_log_likelihood_matches_brute_force_log_det_of_the_flow(qm9) -> None:
    """A random (non-zero) equivariant field: the change-of-variables log p (exact trace integrated
    along the trajectory) equals log N(T(z)) + log|det dT/dz| of the RK4 solver map T, Jacobian by
    brute force (both converge at 4th order; for this gentle field 4 steps agree to ~1e-6, while
    |log det| ~ 0.4, so a wrong sign or a missing term would show)."""
    model, batch, stats = _flow(qm9, n_mols=1, max_atoms=4, zero_init=False, dequantization="uniform",
                                solver="rk4", likelihood_steps=4, exact_trace=True)
    model, batch = _to_double(model, batch)
    model.eval()
    with torch.no_grad():  # a gentler (still nonlinear) field, so that few steps converge
        for p in [*model.net.head_x.parameters(), *model.net.head_h[-1].parameters()]:
            p.mul_(0.3)
    torch.manual_seed(1)
    got = float(model.log_likelihood(batch)[0])
    assert abs(got - _brute_force_log_likelihood(model, batch, stats, 4)) < 2e-5


def test_exact_log_likelihood_is_invariant_under_rotation_and_translation(qm9) -> None:
    model, batch, _ = _flow(qm9, n_mols=3, max_atoms=9, zero_init=False, likelihood_steps=2, exact_trace=True)
    model, batch = _to_double(model, batch)
    model.eval()
    moved = batch.clone()
    rot = o3.rand_matrix(dtype=torch.float64)
    moved.pos = batch.pos @ rot.T + torch.tensor([0.5, 3.0, -1.0], dtype=torch.float64)
    torch.manual_seed(0)
    a = model.log_likelihood(batch)
    torch.manual_seed(0)
    b = model.log_likelihood(moved)
    assert torch.allclose(a, b, rtol=1e-7, atol=1e-6), (a, b)
    torch.manual_seed(1)
    assert not torch.allclose(a, model.log_likelihood(batch), atol=1e-3)  # the dequantization draw matters


def test_rnode_regularizers_are_logged_and_change_the_gradient(qm9) -> None:
    model, batch, _ = _flow(qm9, zero_init=False, kinetic_weight=0.5, jacobian_weight=0.5)
    torch.manual_seed(0)
    out = model.loss(batch)
    assert out["kinetic"] > 0 and out["jacobian_frobenius"] > 0
    expected = out["nll_per_dof"] + 0.5 * (out["kinetic"] + out["jacobian_frobenius"])
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-5)
