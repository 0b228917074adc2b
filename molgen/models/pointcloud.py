"""What every point-cloud family shares: the molecule as continuous ``(x, h)``, labels, sampling glue.

The 3D families (``diffusion``, ``score``, ``flow-matching``, ``flow``, ``ebm``) all see a molecule
as positions ``x [N, 3]`` in the zero centre-of-mass subspace and invariant per-atom features
``h [N, K]`` = one-hot atom type x ``type_scale`` (+ formal charge x ``charge_scale``). This module
holds that encoding and its decoding, label dropout for classifier-free guidance, the guidance
combination and the chunked, seeded ``sample`` loop; a family only writes its objective and its
``_sample_chunk`` (from atom counts and labels to final ``(x, h)``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from molgen.chem.elements import ELEMENTS, Molecule3D
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import Generator, Targets
from molgen.nn.graph import remove_mean


@dataclass
class PointCloudConfig:
    """Options every point-cloud family has (YAML section ``family:``)."""

    sampling_steps: int = 1000
    type_scale: float = 0.25
    charge_scale: float = 0.1
    include_charges: bool = True
    cond_drop_prob: float = 0.1  # classifier-free guidance: drop all labels
    prop_drop_prob: float = 0.1  # condition on any subset: drop single labels
    guidance: float = 0.0
    sample_batch_size: int = 500


#: ``field(zx, zh, t, batch, num_graphs, y, y_mask) -> (vector [N, 3], features [N, K])``
Field = Callable[..., tuple[Tensor, Tensor]]


class PointCloudGenerator(Generator):
    """Base class of the 3D point-cloud families (see the module docstring)."""

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        self.fc = cfg.family
        self.num_types = len(ELEMENTS)
        self.feat_dim = self.num_types + (1 if self.fc.include_charges else 0)

    # ------------------------------------------------------------------ encoding
    def features(self, batch: Any) -> Tensor:
        """``h [N, K]``: scaled one-hot atom types (+ scaled formal charge)."""
        dtype = batch.pos.dtype
        onehot = nn.functional.one_hot(batch.atom_types, self.num_types).to(dtype) * self.fc.type_scale
        if not self.fc.include_charges:
            return onehot
        return torch.cat([onehot, batch.charges.to(dtype)[:, None] * self.fc.charge_scale], dim=-1)

    def positions(self, batch: Any) -> Tensor:
        """``x [N, 3]`` with zero centre of mass per molecule."""
        return remove_mean(batch.pos, batch.batch, batch.num_graphs)

    def dims(self, n_atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Degrees of freedom per molecule: positions (zero-CoM subspace) and features."""
        n = n_atoms.float()
        return (n - 1) * 3, n * self.feat_dim

    def labels(self, batch: Any, train: bool) -> tuple[Tensor, Tensor]:
        """Normalized labels and mask ``[B, P]``; in training, whole sets and single labels are dropped."""
        B = batch.num_graphs
        P = len(self.properties)
        if P == 0:
            z = torch.zeros(B, 0, device=batch.pos.device)
            return z, z
        y, mask = batch.y.view(B, P), batch.y_mask.view(B, P).float()
        if train:
            keep_prop = (torch.rand(B, P, device=y.device) >= self.fc.prop_drop_prob).float()
            keep_all = (torch.rand(B, 1, device=y.device) >= self.fc.cond_drop_prob).float()
            mask = mask * keep_prop * keep_all
        return y * mask, mask

    @staticmethod
    def guided(field: Field, zx: Tensor, zh: Tensor, t: Tensor, batch: Tensor, num_graphs: int,
               y: Tensor, y_mask: Tensor, guidance: float = 0.0) -> tuple[Tensor, Tensor]:
        """``field`` with classifier-free guidance: ``(1 + w) f(y) - w f(no labels)`` in one batched call."""
        if guidance == 0.0 or y.shape[1] == 0:
            return field(zx, zh, t, batch, num_graphs, y, y_mask)
        n_nodes = zx.shape[0]
        fx, fh = field(
            torch.cat([zx, zx]), torch.cat([zh, zh]), torch.cat([t, t]),
            torch.cat([batch, batch + num_graphs]), 2 * num_graphs,
            torch.cat([y, torch.zeros_like(y)]), torch.cat([y_mask, torch.zeros_like(y_mask)]),
        )
        w = guidance
        return (1 + w) * fx[:n_nodes] - w * fx[n_nodes:], (1 + w) * fh[:n_nodes] - w * fh[n_nodes:]

    def decode(self, x: Tensor, h: Tensor, counts: Tensor) -> list[Molecule3D]:
        """Continuous ``(x, h)`` -> molecules: argmax atom type, rounded formal charge."""
        types = h[:, : self.num_types].argmax(-1)
        charges = (torch.round(h[:, -1] / self.fc.charge_scale).long() if self.fc.include_charges
                   else torch.zeros_like(types))
        x, types, charges = x.detach().cpu().numpy(), types.cpu().numpy(), charges.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(counts.cpu().numpy())])
        return [
            Molecule3D(atom_types=types[a:b], positions=x[a:b].astype(np.float64), charges=charges[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])
        ]

    # ------------------------------------------------------------------ sampling glue
    def randn(self, shape: tuple[int, ...], gen: torch.Generator | None) -> Tensor:
        """Standard normal noise drawn on the CPU generator (seeded runs match across devices)."""
        return torch.randn(shape, generator=gen).to(self.device)

    def prior(self, counts: Tensor, gen: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(batch index [N], zx [N, 3] zero-CoM normal, zh [N, K] normal)`` for atom counts ``[B]``."""
        B = counts.numel()
        idx = torch.repeat_interleave(torch.arange(B), counts.cpu()).to(self.device)
        N = int(counts.sum())
        zx = remove_mean(self.randn((N, 3), gen), idx, B)
        return idx, zx, self.randn((N, self.feat_dim), gen)

    @staticmethod
    def steps_iter(steps: int, progress: bool, desc: str = "sampling"):
        """``range(steps - 1, ..., 0)`` (reverse time), with a tqdm bar when ``progress``."""
        iterator = range(steps - 1, -1, -1)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=steps, desc=desc, leave=False,
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)
        return iterator

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Targets | None = None,
        n_atoms: int | Sequence[int] | Tensor | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[Molecule3D]:
        """``n`` molecules with ``steps`` solver steps (default ``family.sampling_steps``), in chunks."""
        steps = steps or self.fc.sampling_steps
        if steps < 1:
            raise MolgenError("--steps must be at least 1")
        guidance = self.fc.guidance if guidance is None else guidance
        cpu_gen = torch.Generator().manual_seed(seed) if seed is not None else None
        counts = self.resolve_n_atoms(n, n_atoms, cpu_gen)
        y_all, mask_all = self.resolve_cond(n, cond)
        bs = batch_size or self.fc.sample_batch_size
        mols: list[Molecule3D] = []
        for start in range(0, n, bs):
            sl = slice(start, min(n, start + bs))
            c = counts[sl]
            x, h = self._sample_chunk(c, y_all[sl], mask_all[sl], steps, guidance, cpu_gen, progress)
            mols.extend(self.decode(x, h, c))
        annotate_targets(mols, cond)
        return mols

    def _sample_chunk(self, counts: Tensor, y: Tensor, y_mask: Tensor, steps: int, guidance: float,
                      gen: torch.Generator | None, progress: bool) -> tuple[Tensor, Tensor]:
        """Final ``(x [N, 3], h [N, K])`` for one chunk of molecules with atom counts ``counts``."""
        raise NotImplementedError


def annotate_targets(mols: list[Molecule3D], cond: Targets | None) -> None:
    """Record the requested targets (user units) as ``target_<prop>`` on each molecule."""
    if not cond:
        return
    n = len(mols)
    for key, value in cond.items():
        values = np.broadcast_to(np.asarray(value, dtype=float).ravel(), (n,))
        for m, v in zip(mols, values):
            m.properties[f"target_{key}"] = float(v)
