"""Fixed-step solvers and the change-of-variables likelihood against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from molgen.nn.graph import remove_mean
from molgen.sampling import ode


def test_solvers_converge_on_exponential_decay() -> None:
    f = lambda t, z: (-z[0],)  # noqa: E731
    z0 = (torch.ones(1, 1, dtype=torch.float64),)
    errs = {m: abs(float(ode.odeint(f, z0, 0.0, 1.0, 10, m)[0]) - math.exp(-1)) for m in ode.METHODS}
    assert errs["rk4"] < 1e-6 < errs["heun"] < 1e-3 < errs["euler"] < 0.05


@pytest.mark.parametrize("exact", [True, False])
def test_linear_flow_log_likelihood_matches_closed_form(exact: bool) -> None:
    """Linear field on (zero-CoM positions, features): the pushforward of the prior is Gaussian."""
    torch.manual_seed(0)
    counts = torch.tensor([3, 5])
    batch = torch.repeat_interleave(torch.arange(2), counts)
    B, K = 2, 4
    A = torch.randn(K, K, dtype=torch.float64) * 0.3
    a = -0.7

    def field(t, z):
        x, h = z
        return a * remove_mean(x, batch, B), h @ A.T

    x0 = remove_mean(torch.randn(8, 3, dtype=torch.float64), batch, B)
    h0 = torch.randn(8, K, dtype=torch.float64)
    dims = [(counts - 1) * 3, counts * K]
    got = ode.log_likelihood(field, (x0, h0), batch, B, dims, t_data=0.0, t_prior=1.0, steps=50,
                             method="rk4", exact=exact, seed=0)
    # closed form: z1 = exp(a) x0, h1 = h0 exp(A)^T; log p(z0) = log N(z1) + (n-1)*3*a + n*tr(A)
    x1, h1 = math.exp(a) * x0, h0 @ torch.linalg.matrix_exp(A).T
    ref = ode.standard_normal_log_prob((x1, h1), batch, B, dims) + dims[0] * a + counts * torch.trace(A)
    if exact:
        assert torch.allclose(got, ref, atol=1e-6)
    else:  # Hutchinson is exact in expectation; for a linear field its variance comes from A's off-diagonal
        assert torch.allclose(got, ref, atol=3.0)


def test_exact_divergence_of_nonlinear_field_matches_autograd_jacobian() -> None:
    torch.manual_seed(1)
    counts = torch.tensor([2, 3])
    batch = torch.repeat_interleave(torch.arange(2), counts)
    W = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = (torch.tanh(x @ W),)
    div = ode.divergence(out, (x,), batch, 2, exact=True)
    for g in range(2):
        rows = (batch == g).nonzero().flatten()
        J = torch.autograd.functional.jacobian(lambda v: torch.tanh(v @ W), x.detach()[rows])
        assert abs(float(div[g]) - float(torch.einsum("ijij->", J))) < 1e-10
