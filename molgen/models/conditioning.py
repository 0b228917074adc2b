"""Conditioning on property labels, one way for every family.

Every family trains on normalized labels ``y [B, P]`` with a mask ``[B, P]`` of the properties
that are given. Dropping labels in training gives classifier-free guidance (Ho & Salimans 2022)
and conditioning on any subset of the trained properties: with probability ``cond_drop_prob`` a
molecule loses its whole label set, and each remaining label is dropped with probability
``prop_drop_prob``. At sampling, ``guidance`` (w) and ``composition`` (``joint`` | ``product``)
combine the network's outputs under several label sets (:mod:`molgen.sampling.guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from molgen.sampling.guidance import check_composition


@dataclass
class ConditioningConfig:
    """The conditioning options every family has (flat keys of its YAML section ``family:``)."""

    cond_drop_prob: float = 0.1  # classifier-free guidance: drop all labels
    prop_drop_prob: float = 0.1  # condition on any subset: drop single labels
    guidance: float = 0.0  # default guidance weight w at sampling
    composition: str = "joint"  # joint | product: how several targets combine at sampling

    def __post_init__(self) -> None:
        check_composition(self.composition)


def masked_labels(batch: Any, num_properties: int, cfg: ConditioningConfig, train: bool) -> tuple[Tensor, Tensor]:
    """Labels and mask ``[B, P]`` of a graph batch, masked labels zeroed; dropped at random in training.

    Args:
        batch: a PyG ``Batch`` with ``y`` and ``y_mask`` (``[B * P]`` or ``[B, P]``) and ``pos``.
        num_properties: P (0: an unconditional model; returns empty ``[B, 0]`` tensors).
        cfg: the drop probabilities.
        train: drop whole label sets (``cond_drop_prob``) and single labels (``prop_drop_prob``).
    """
    B, P = batch.num_graphs, num_properties
    if P == 0:
        z = torch.zeros(B, 0, device=batch.pos.device, dtype=batch.pos.dtype)
        return z, z
    y, mask = batch.y.view(B, P), batch.y_mask.view(B, P).to(batch.y.dtype)
    if train:
        keep_prop = (torch.rand(B, P, device=y.device) >= cfg.prop_drop_prob).to(y.dtype)
        keep_all = (torch.rand(B, 1, device=y.device) >= cfg.cond_drop_prob).to(y.dtype)
        mask = mask * keep_prop * keep_all
    return y * mask, mask
