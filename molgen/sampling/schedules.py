"""Noise schedules of variance-preserving diffusion, as ``gamma(t) = -log SNR(t)`` on t in [0, 1].

``alpha_t^2 = sigmoid(-gamma_t)`` and ``sigma_t^2 = sigmoid(gamma_t)``, so alpha^2 + sigma^2 = 1.
The polynomial schedule is EDM's default (Hoogeboom et al. 2022, App. B): ``alpha_t^2 = (1 - t^p)^2``
on a grid of ``T`` steps, with the per-step ratio ``alpha_t^2 / alpha_{t-1}^2`` clipped from below
(for a stable last step) and squeezed into ``[s, 1 - s]`` (the "precision").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from molgen.errors import MolgenError


class NoiseSchedule(nn.Module):
    """A tabulated ``gamma`` on ``T + 1`` grid points, linearly interpolated in between.

    Args:
        gamma_table: ``T + 1`` values of gamma at t = 0, 1/T, ..., 1 (increasing).
    """

    def __init__(self, gamma_table: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(gamma_table, dtype=torch.float64), persistent=False)
        self.timesteps = len(gamma_table) - 1

    def gamma(self, t: Tensor) -> Tensor:
        """``gamma(t)`` for t in [0, 1] (any shape); float32 result."""
        pos = t.double().clamp(0, 1) * self.timesteps
        lo = pos.floor().long().clamp(max=self.timesteps - 1)
        frac = pos - lo
        g = self.table[lo] * (1 - frac) + self.table[lo + 1] * frac
        return g.float()

    @staticmethod
    def alpha(gamma: Tensor) -> Tensor:
        return torch.sigmoid(-gamma).sqrt()

    @staticmethod
    def sigma(gamma: Tensor) -> Tensor:
        return torch.sigmoid(gamma).sqrt()


def polynomial_gamma(timesteps: int, power: float = 2.0, precision: float = 1e-5) -> np.ndarray:
    """EDM's polynomial schedule as a gamma table of ``timesteps + 1`` values."""
    t = np.linspace(0.0, 1.0, timesteps + 1)
    alpha2 = (1.0 - t**power) ** 2
    # clip each step's ratio so that no single step destroys more than 99.9% of the signal
    ratios = np.clip(alpha2[1:] / np.maximum(alpha2[:-1], 1e-300), 0.001, 1.0)
    alpha2 = np.concatenate([[1.0], np.cumprod(ratios)])
    alpha2 = (1.0 - 2.0 * precision) * alpha2 + precision
    sigma2 = 1.0 - alpha2
    return np.log(sigma2) - np.log(alpha2)


def cosine_gamma(timesteps: int, offset: float = 0.008, precision: float = 1e-5) -> np.ndarray:
    """The cosine schedule of Nichol & Dhariwal (2021) as a gamma table."""
    t = np.linspace(0.0, 1.0, timesteps + 1)
    f = np.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha2 = f / f[0]
    ratios = np.clip(alpha2[1:] / np.maximum(alpha2[:-1], 1e-300), 0.001, 1.0)
    alpha2 = np.concatenate([[1.0], np.cumprod(ratios)])
    alpha2 = (1.0 - 2.0 * precision) * alpha2 + precision
    return np.log(1.0 - alpha2) - np.log(alpha2)


SCHEDULES = {"polynomial_2": lambda T, p: polynomial_gamma(T, 2.0, p), "cosine": cosine_gamma}


def make_schedule(name: str, timesteps: int, precision: float) -> NoiseSchedule:
    """Build a schedule by name (``polynomial_2`` or ``cosine``)."""
    if name not in SCHEDULES:
        raise MolgenError(f"unknown noise schedule '{name}' (choose from: {', '.join(SCHEDULES)})")
    return NoiseSchedule(SCHEDULES[name](timesteps, precision))
