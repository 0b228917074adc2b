"""Variance-preserving Gaussian diffusion math, independent of any network (diffusers-style scheduler).

Notation (Kingma et al. 2021, VDM; EDM): ``z_t = alpha_t x + sigma_t eps``, ``gamma_t = -log SNR(t)``.
All functions take ``gamma`` already broadcast to the shape of the data they act on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as Fn


def noise(x: Tensor, eps: Tensor, gamma: Tensor) -> Tensor:
    """Forward process: ``z_t = alpha_t x + sigma_t eps``."""
    return torch.sigmoid(-gamma).sqrt() * x + torch.sigmoid(gamma).sqrt() * eps


def posterior_step(z_t: Tensor, eps_hat: Tensor, gamma_s: Tensor, gamma_t: Tensor, eps: Tensor) -> Tensor:
    """Ancestral step: sample ``z_s ~ p(z_s | z_t)`` (s < t) given the predicted noise ``eps_hat``.

    ``p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t, eps_hat))``: mean
    ``z_t / alpha_{t|s} - sigma^2_{t|s} / (alpha_{t|s} sigma_t) eps_hat`` and standard deviation
    ``sigma_{t|s} sigma_s / sigma_t``, where ``alpha^2_{t|s} = alpha_t^2 / alpha_s^2``.
    """
    log_alpha2_ts = Fn.logsigmoid(-gamma_t) - Fn.logsigmoid(-gamma_s)
    sigma2_ts = -torch.expm1(log_alpha2_ts)
    alpha_ts = torch.exp(0.5 * log_alpha2_ts)
    sigma_t = torch.sigmoid(gamma_t).sqrt()
    sigma_s = torch.sigmoid(gamma_s).sqrt()
    mean = z_t / alpha_ts - (sigma2_ts / (alpha_ts * sigma_t)) * eps_hat
    std = sigma2_ts.sqrt() * sigma_s / sigma_t
    return mean + std * eps


def predict_x0(z_t: Tensor, eps_hat: Tensor, gamma_t: Tensor) -> Tensor:
    """``x_hat = (z_t - sigma_t eps_hat) / alpha_t``."""
    return (z_t - torch.sigmoid(gamma_t).sqrt() * eps_hat) / torch.sigmoid(-gamma_t).sqrt()


def snr_weight(gamma_s: Tensor, gamma_t: Tensor) -> Tensor:
    """``SNR(s) / SNR(t) - 1``: the weight of ``||eps - eps_hat||^2 / 2`` in the diffusion term of the VLB."""
    return torch.expm1(gamma_t - gamma_s)


def kl_to_standard_normal(mean_sq_sum: Tensor, sigma2: Tensor, dims: Tensor) -> Tensor:
    """``KL(N(mu, sigma^2 I_d) || N(0, I_d))`` given ``||mu||^2``, sigma^2 and d (per molecule)."""
    return 0.5 * (dims * sigma2 + mean_sq_sum - dims - dims * torch.log(sigma2))


def gaussian_nll_constant(dims: Tensor, gamma_0: Tensor) -> Tensor:
    """``d (log(2 pi) / 2 + log(sigma_0 / alpha_0))``: the normalizer of ``p(x | z_0)`` in d dimensions."""
    return dims * (0.5 * math.log(2 * math.pi) + 0.5 * gamma_0)


def discretized_gaussian_log_prob(value: Tensor, estimate: Tensor, sigma: Tensor) -> Tensor:
    """``log P(value)`` of an integer under N(estimate, sigma^2) integrated over ``[value +- 1/2]``."""
    centered = value - estimate
    upper = torch.special.ndtr((centered + 0.5) / sigma)
    lower = torch.special.ndtr((centered - 0.5) / sigma)
    return torch.log((upper - lower).clamp(min=1e-10))


def categorical_log_prob(onehot: Tensor, estimate: Tensor, sigma: Tensor) -> Tensor:
    """``log P(class)`` where each class's score is the mass of N(estimate_k, sigma^2) within 1/2 of 1.

    EDM's likelihood of one-hot atom types given ``z_0``; normalized over classes. Shapes ``[N, K]`` -> ``[N]``.
    """
    centered = estimate - 1.0
    log_mass = torch.log(
        (torch.special.ndtr((centered + 0.5) / sigma) - torch.special.ndtr((centered - 0.5) / sigma)).clamp(min=1e-10)
    )
    log_probs = log_mass - torch.logsumexp(log_mass, dim=-1, keepdim=True)
    return (log_probs * onehot).sum(-1)
