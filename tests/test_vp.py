"""Diffusion math against independent references (Bayes' rule, torch.distributions, quadrature)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate, stats

from molgen.sampling import vp
from molgen.sampling.schedules import make_schedule


def test_polynomial_schedule_shape() -> None:
    sched = make_schedule("polynomial_2", 1000, 1e-5)
    t = torch.linspace(0, 1, 1001)
    g = sched.gamma(t)
    assert torch.all(g[1:] >= g[:-1])
    a2, s2 = sched.alpha(g) ** 2, sched.sigma(g) ** 2
    assert torch.allclose(a2 + s2, torch.ones_like(a2), atol=1e-6)
    assert abs(float(a2[0]) - (1 - 1e-5)) < 1e-6  # precision s at t = 0
    assert float(a2[-1]) < 1e-4  # (almost) pure noise at t = 1


def test_posterior_step_is_bayes_posterior() -> None:
    """With eps_hat the true noise, the step samples q(z_s | z_t, x): check mean and variance."""
    torch.manual_seed(0)
    gs, gt = torch.tensor(-2.0), torch.tensor(1.0)
    a_s, s_s = math.sqrt(torch.sigmoid(-gs)), math.sqrt(torch.sigmoid(gs))
    a_t, s_t = math.sqrt(torch.sigmoid(-gt)), math.sqrt(torch.sigmoid(gt))
    x = torch.tensor([0.7])
    eps = torch.tensor([0.3])
    z_t = a_t * x + s_t * eps
    # independent reference: z_s ~ N(a_s x, s_s^2), z_t | z_s ~ N(a_ts z_s, s_ts^2); Bayes for z_s | z_t
    a_ts = a_t / a_s
    s2_ts = s_t**2 - a_ts**2 * s_s**2
    prec = 1 / s_s**2 + a_ts**2 / s2_ts
    mean_ref = (a_s * x / s_s**2 + a_ts * z_t / s2_ts) / prec
    var_ref = 1 / prec
    noise = torch.randn(200_000)
    z_s = vp.posterior_step(z_t.expand(200_000), eps.expand(200_000), gs, gt, noise)
    assert abs(float(z_s.mean() - mean_ref)) < 5e-3
    assert abs(float(z_s.var()) - var_ref) < 5e-3 * var_ref + 1e-4


def test_kl_to_standard_normal_matches_torch() -> None:
    mu = torch.tensor([0.3, -1.2, 2.0])
    sigma2 = torch.tensor(0.4)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma2.sqrt()), torch.distributions.Normal(0.0, 1.0)
    ).sum()
    got = vp.kl_to_standard_normal((mu**2).sum(), sigma2, torch.tensor(3.0))
    assert torch.allclose(got, ref, atol=1e-6)


def test_discretized_gaussian_matches_quadrature() -> None:
    value, est, sigma = torch.tensor(1.0), torch.tensor(0.8), torch.tensor(0.4)
    ref = integrate.quad(lambda u: stats.norm.pdf(u, 0.8, 0.4), 0.5, 1.5)[0]
    assert abs(float(vp.discretized_gaussian_log_prob(value, est, sigma)) - math.log(ref)) < 1e-5


def test_categorical_log_prob_normalized() -> None:
    est = torch.randn(5, 4)
    sigma = torch.tensor(0.5)
    total = sum(torch.exp(vp.categorical_log_prob(torch.eye(4)[k].expand(5, 4), est, sigma)) for k in range(4))
    assert torch.allclose(total, torch.ones(5), atol=1e-5)


def test_gaussian_nll_constant() -> None:
    # -log N(x; mu, s^2 I_d) at ||x - mu|| = 0 equals d (log(2 pi)/2 + log s), s^2 = exp(gamma)
    gamma, d = torch.tensor(-3.0), torch.tensor(6.0)
    s = math.exp(0.5 * -3.0)
    ref = -stats.multivariate_normal(np.zeros(6), s**2 * np.eye(6)).logpdf(np.zeros(6))
    assert abs(float(vp.gaussian_nll_constant(d, gamma)) - ref) < 1e-4
