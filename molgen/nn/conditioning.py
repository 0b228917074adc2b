"""Condition encoder: noise level / time and (masked) property labels -> one condition vector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Fourier features of a scalar in [0, 1] (diffusion time, noise level), as in Transformers/DDPM.

    Args:
        dim: output width (even).
        max_period: the longest wavelength, in units of the input.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * 1000.0, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        # t: [B] -> [B, dim]
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ConditionEncoder(nn.Module):
    """Embeds ``(t, y, y_mask)`` into a graph-level condition vector ``c``.

    Unset properties (``y_mask == 0``) contribute nothing but their mask bit, so one network serves
    unconditional generation, any subset of properties, and classifier-free guidance (drop the
    whole mask during training).

    Args:
        num_properties: P, the number of properties the model knows (0: unconditional).
        dim: width of ``c``.
        use_time: whether a time / noise-level input is embedded.

    Shapes:
        t: ``[B]`` in [0, 1] (or ``None``); y, y_mask: ``[B, P]`` -> ``c``: ``[B, dim]``.
    """

    def __init__(self, num_properties: int, dim: int, use_time: bool = True) -> None:
        super().__init__()
        self.num_properties = num_properties
        self.use_time = use_time
        self.time_embed = SinusoidalEmbedding(dim) if use_time else None
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if use_time else None
        self.prop_mlp = (
            nn.Sequential(nn.Linear(2 * num_properties, dim), nn.SiLU(), nn.Linear(dim, dim))
            if num_properties > 0
            else None
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))
        self.dim = dim

    def forward(
        self, batch_size: int, t: Tensor | None = None, y: Tensor | None = None, y_mask: Tensor | None = None
    ) -> Tensor:
        weight = self.out[1].weight
        c = torch.zeros(batch_size, self.dim, device=weight.device, dtype=weight.dtype)
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this condition encoder needs a time input")
            c = c + self.time_mlp(self.time_embed(t))
        if self.prop_mlp is not None and y is not None:
            mask = torch.ones_like(y) if y_mask is None else y_mask.to(y.dtype)
            c = c + self.prop_mlp(torch.cat([y * mask, mask], dim=-1))
        return self.out(c)
