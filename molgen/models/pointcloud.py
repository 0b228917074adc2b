"""What every point-cloud family shares: the molecule as continuous ``(x, h)``, its decoding, guidance.

The 3D families (``diffusion``, ``score``, ``flow-matching``, ``flow``, ``ebm``) all see a molecule
as positions ``x [N, 3]`` in the zero centre-of-mass subspace and invariant per-atom features
``h [N, K]`` = one-hot atom type x ``type_scale`` (+ formal charge x ``charge_scale``). This module
holds that encoding and its decoding, the prior draw and the guided evaluation of a field; the
seeded, chunked ``sample`` loop is :meth:`molgen.models.base.Generator.sample`. A family writes its
objective and :meth:`PointCloudGenerator.sample_state` (from a chunk's atom counts and labels to
final ``(x, h)``).

Shape names: ``batch_index [N]`` maps each atom to its molecule (PyG's ``batch.batch``),
``num_graphs`` is B.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from molgen.chem.elements import ELEMENTS, Molecule3D
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import Generator, SampleChunk
from molgen.models.conditioning import ConditioningConfig
from molgen.models.options import SampleOptions
from molgen.nn.graph import remove_mean
from molgen.sampling.guidance import guidance_experts, stack_experts


@dataclass
class AtomFeatureConfig:
    """How atoms become continuous invariant features ``h`` (families that embed 3D molecules)."""

    type_scale: float = 0.25
    charge_scale: float = 0.1
    include_charges: bool = True


@dataclass
class PointCloudConfig(ConditioningConfig, AtomFeatureConfig):
    """Options every point-cloud family has (YAML section ``family:``)."""

    sampling_steps: int = 1000
    sample_batch_size: int = 500


@dataclass
class TimeSamplingConfig:
    """Training times ``t ~ Beta(time_alpha, time_beta)`` on the family's own time axis (1, 1 =
    uniform, the published objective). Validation always draws uniform times, so ``val/loss`` is the
    same objective whatever the setting and compares across runs."""

    time_alpha: float = 1.0
    time_beta: float = 1.0


def check_time_sampling(cfg: TimeSamplingConfig) -> None:
    """One line for a Beta parameter that is not positive."""
    if not (cfg.time_alpha > 0 and cfg.time_beta > 0):
        raise MolgenError(f"family.time_alpha and family.time_beta must be > 0 (got {cfg.time_alpha}, {cfg.time_beta})")


def training_times(cfg: TimeSamplingConfig, n: int, like: Tensor, training: bool = True) -> Tensor | None:
    """``[n]`` times in [0, 1] from ``Beta(time_alpha, time_beta)``, or None where the family should
    draw its own uniform times (the setting is 1, 1, or this is not training)."""
    a, b = float(cfg.time_alpha), float(cfg.time_beta)
    if not training or (a == 1.0 and b == 1.0):
        return None
    beta = torch.distributions.Beta(torch.tensor(a), torch.tensor(b))
    return beta.sample((n,)).to(like.device, like.dtype)


#: Å; a decoded coordinate beyond this (or not finite) makes the molecule one without structure
MAX_COORDINATE = 1.0e4

#: ``field(zx, zh, t, batch_index, num_graphs, y, y_mask) -> (vector [N, 3], features [N, K])``
Field = Callable[..., tuple[Tensor, Tensor]]


def atom_features(batch: Any, cfg: AtomFeatureConfig, num_types: int = len(ELEMENTS)) -> Tensor:
    """``h [N, K]``: one-hot atom types x ``type_scale`` (+ formal charge x ``charge_scale``)."""
    dtype = batch.pos.dtype
    onehot = nn.functional.one_hot(batch.atom_types, num_types).to(dtype) * cfg.type_scale
    if not cfg.include_charges:
        return onehot
    return torch.cat([onehot, batch.charges.to(dtype)[:, None] * cfg.charge_scale], dim=-1)


def feature_dim(cfg: AtomFeatureConfig, num_types: int = len(ELEMENTS)) -> int:
    """K, the width of :func:`atom_features`."""
    return num_types + (1 if cfg.include_charges else 0)


def guided(field: Field, zx: Tensor, zh: Tensor, t: Tensor, batch_index: Tensor, num_graphs: int,
           y: Tensor, y_mask: Tensor, guidance: float = 0.0, composition: str = "joint") -> tuple[Tensor, Tensor]:
    """``field`` under classifier-free guidance / product-of-experts composition, in one batched call.

    The label sets and their coefficients are :func:`molgen.sampling.guidance.guidance_experts`'
    (``joint``: ``(1 + w) f(y) - w f(no labels)``; ``product``: one expert per given property); the
    K sets run as one batch of ``K * B`` molecules and the outputs are ``sum_k c_k f_k``. Unguided,
    it is one plain call of ``field``.
    """
    experts = guidance_experts(y, y_mask, guidance, composition)
    if len(experts) == 1 and bool((experts[0][2] == 1).all()):
        return field(zx, zh, t, batch_index, num_graphs, experts[0][0], experts[0][1])
    K, N = len(experts), zx.shape[0]
    index_k, y_k, mask_k, coef = stack_experts(experts, batch_index, num_graphs)
    fx, fh = field(zx.repeat(K, 1), zh.repeat(K, 1), t.repeat(K), index_k, K * num_graphs, y_k, mask_k)
    coef = coef[:, batch_index, None]  # [K, N, 1]
    out_x = (coef.to(fx.dtype) * fx.view(K, N, -1)).sum(0)
    out_h = (coef.to(fh.dtype) * fh.view(K, N, -1)).sum(0)
    return out_x, out_h


class PointCloudGenerator(Generator):
    """Base class of the 3D point-cloud families (see the module docstring)."""

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        self.num_types = len(ELEMENTS)
        self.feat_dim = feature_dim(self.fc, self.num_types)

    # ------------------------------------------------------------------ encoding
    def features(self, batch: Any) -> Tensor:
        """``h [N, K]``: scaled one-hot atom types (+ scaled formal charge)."""
        return atom_features(batch, self.fc, self.num_types)

    def positions(self, batch: Any) -> Tensor:
        """``x [N, 3]`` with zero centre of mass per molecule."""
        return remove_mean(batch.pos, batch.batch, batch.num_graphs)

    def dims(self, n_atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Degrees of freedom per molecule: positions (zero-CoM subspace) and features."""
        n = n_atoms.float()
        return (n - 1) * 3, n * self.feat_dim

    guided = staticmethod(guided)

    def decode(self, x: Tensor, h: Tensor, counts: Tensor) -> list[Molecule3D]:
        """Continuous ``(x, h)`` -> molecules: argmax atom type, rounded formal charge."""
        types = h[:, : self.num_types].argmax(-1)
        finite_h = torch.isfinite(h).all(-1).cpu().numpy()
        charges = (torch.round(torch.nan_to_num(h[:, -1] / self.fc.charge_scale).clamp(-9, 9)).long()
                   if self.fc.include_charges else torch.zeros_like(types))
        x, types, charges = x.detach().cpu().double().numpy(), types.cpu().numpy(), charges.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(counts.cpu().numpy())])
        mols = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            pos = x[a:b]
            if not (np.isfinite(pos).all() and np.abs(pos).max(initial=0.0) < MAX_COORDINATE
                    and finite_h[a:b].all()):
                pos = np.full_like(pos, np.nan)  # a diverged sample: no structure, counted invalid
            mols.append(Molecule3D(atom_types=types[a:b], positions=pos, charges=charges[a:b]))
        return mols

    # ------------------------------------------------------------------ sampling
    def prior(self, counts: Tensor, gen: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(batch_index [N], zx [N, 3] zero-CoM normal, zh [N, K] normal)`` for atom counts ``[B]``."""
        B = counts.numel()
        batch_index = torch.repeat_interleave(torch.arange(B), counts.cpu()).to(self.device)
        N = int(counts.sum())
        zx = remove_mean(self.randn((N, 3), gen), batch_index, B)
        return batch_index, zx, self.randn((N, self.feat_dim), gen)

    @staticmethod
    def steps_iter(steps: int, progress: bool, desc: str = "sampling"):
        """``range(steps - 1, ..., 0)`` (reverse time), with a tqdm bar when ``progress``."""
        iterator = range(steps - 1, -1, -1)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=steps, desc=desc, leave=False,
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)
        return iterator

    def sample_chunk(self, chunk: SampleChunk, opts: SampleOptions, gen: torch.Generator,
                     progress: bool) -> list[Molecule3D]:
        x, h = self.sample_state(chunk, opts, gen, progress)
        return self.decode(x, h, chunk.counts)

    @abstractmethod
    def sample_state(self, chunk: SampleChunk, opts: SampleOptions, gen: torch.Generator,
                     progress: bool) -> tuple[Tensor, Tensor]:
        """Final ``(x [N, 3], h [N, K])`` of one chunk (atom counts ``chunk.counts``, ``opts.steps`` steps)."""
