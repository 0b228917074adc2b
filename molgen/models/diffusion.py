"""``diffusion``: E(3) equivariant diffusion over positions, atom types and formal charges (EDM).

Hoogeboom, Satorras, Vignac & Welling, "Equivariant Diffusion for Molecule Generation in 3D",
ICML 2022. Positions diffuse in the zero centre-of-mass subspace, one-hot atom types (scaled by
``type_scale``) and integer formal charges (scaled by ``charge_scale``) diffuse as continuous
features; the shared backbone predicts the noise (``eps``) of both, equivariantly for positions.
Conditioning: property labels with a mask; during training whole label sets (``cond_drop_prob``)
and single properties (``prop_drop_prob``) are dropped, which gives classifier-free guidance
(Ho & Salimans 2022) and conditioning on any subset of the trained properties.

``log_likelihood`` is EDM's variational bound (prior KL + T x one uniformly drawn diffusion term
+ the t=0 reconstruction term - log p(N)), an unbiased single-sample estimate in nats per molecule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from e3nn import o3
from torch import Tensor, nn

from molgen.chem.elements import ELEMENTS, Molecule3D
from molgen.config import BackboneConfig, RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import Generator, Targets
from molgen.models.registry import register
from molgen.nn.backbone import EquivariantBackbone, fp32
from molgen.nn.conditioning import ConditionEncoder
from molgen.nn.graph import remove_mean, scatter_sum
from molgen.sampling import vp
from molgen.sampling.schedules import make_schedule


@dataclass
class DiffusionConfig:
    """Family options of ``diffusion`` (YAML section ``family:``)."""

    timesteps: int = 1000
    schedule: str = "polynomial_2"
    precision: float = 1e-5
    sampling_steps: int = 1000
    type_scale: float = 0.25
    charge_scale: float = 0.1
    include_charges: bool = True
    cond_drop_prob: float = 0.1
    prop_drop_prob: float = 0.1
    guidance: float = 0.0
    sample_batch_size: int = 500


class EpsNetwork(nn.Module):
    """Noise predictor: condition encoder + shared backbone + two small heads.

    Shapes: zx ``[N, 3]``, zh ``[N, K]``, t ``[B]``, y/y_mask ``[B, P]`` -> eps_x ``[N, 3]`` (zero mean
    per molecule), eps_h ``[N, K]``.
    """

    def __init__(self, feat_dim: int, num_properties: int, bcfg: BackboneConfig) -> None:
        super().__init__()
        self.cond = ConditionEncoder(num_properties, bcfg.cond_dim, use_time=True)
        self.backbone = EquivariantBackbone(feat_dim, bcfg)
        self.head_x = o3.Linear(f"{bcfg.vector_dim}x1o", "1x1o")
        self.head_h = nn.Sequential(nn.Linear(bcfg.scalar_dim, bcfg.scalar_dim), nn.SiLU(), nn.Linear(bcfg.scalar_dim, feat_dim))

    def forward(
        self, zx: Tensor, zh: Tensor, t: Tensor, batch: Tensor, num_graphs: int, y: Tensor, y_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        c = self.cond(num_graphs, t, y, y_mask)
        out = self.backbone(zh, zx, batch, c, num_graphs=num_graphs)
        eps_x = fp32(self.head_x, out.vectors.reshape(out.vectors.shape[0], -1))
        return remove_mean(eps_x, batch, num_graphs), self.head_h(out.scalars).float()


@register("diffusion")
class EquivariantDiffusion(Generator):
    config_cls = DiffusionConfig

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        fc: DiffusionConfig = cfg.family
        self.fc = fc
        self.num_types = len(ELEMENTS)
        self.feat_dim = self.num_types + (1 if fc.include_charges else 0)
        self.schedule = make_schedule(fc.schedule, fc.timesteps, fc.precision)
        self.net = EpsNetwork(self.feat_dim, len(stats.properties), cfg.backbone)

    # ------------------------------------------------------------------ features
    def _features(self, batch: Any) -> Tensor:
        dtype = batch.pos.dtype
        onehot = nn.functional.one_hot(batch.atom_types, self.num_types).to(dtype) * self.fc.type_scale
        if not self.fc.include_charges:
            return onehot
        return torch.cat([onehot, batch.charges.to(dtype)[:, None] * self.fc.charge_scale], dim=-1)

    def _dims(self, n_atoms: Tensor) -> tuple[Tensor, Tensor]:
        """Degrees of freedom per molecule: positions (zero-CoM subspace) and features."""
        n = n_atoms.float()
        return (n - 1) * 3, n * self.feat_dim

    def _eps(self, zx, zh, t, batch, num_graphs, y, y_mask, guidance: float = 0.0) -> tuple[Tensor, Tensor]:
        """Network noise prediction, with classifier-free guidance ``(1 + w) eps_c - w eps_u``."""
        if guidance == 0.0 or y.shape[1] == 0:
            return self.net(zx, zh, t, batch, num_graphs, y, y_mask)
        n_nodes = zx.shape[0]
        eps_x, eps_h = self.net(
            torch.cat([zx, zx]), torch.cat([zh, zh]), torch.cat([t, t]),
            torch.cat([batch, batch + num_graphs]), 2 * num_graphs,
            torch.cat([y, torch.zeros_like(y)]), torch.cat([y_mask, torch.zeros_like(y_mask)]),
        )
        w = guidance
        return (
            (1 + w) * eps_x[:n_nodes] - w * eps_x[n_nodes:],
            (1 + w) * eps_h[:n_nodes] - w * eps_h[n_nodes:],
        )

    def _labels(self, batch: Any, train: bool) -> tuple[Tensor, Tensor]:
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

    # ------------------------------------------------------------------ protocol
    def _diffusion_error(self, batch: Any, t_int: Tensor, train: bool) -> dict[str, Tensor]:
        """Noise the batch at integer times ``t_int`` [B] and return per-molecule squared errors."""
        T = self.fc.timesteps
        B, idx = batch.num_graphs, batch.batch
        x = remove_mean(batch.pos, idx, B)
        h = self._features(batch)
        t = t_int.float() / T
        gamma_t = self.schedule.gamma(t)
        g = gamma_t[idx][:, None]
        eps_x = remove_mean(torch.randn_like(x), idx, B)
        eps_h = torch.randn_like(h)
        zx, zh = vp.noise(x, eps_x, g), vp.noise(h, eps_h, g)
        y, y_mask = self._labels(batch, train)
        eps_hat_x, eps_hat_h = self.net(zx, zh, t, idx, B, y, y_mask)
        err_x = scatter_sum(((eps_x - eps_hat_x) ** 2).sum(-1), idx, B)
        err_h = scatter_sum(((eps_h - eps_hat_h) ** 2).sum(-1), idx, B)
        return {"x": x, "h": h, "zh": zh, "err_x": err_x, "err_h": err_h, "gamma_t": gamma_t}

    def loss(self, batch: Any) -> dict[str, Tensor]:
        """EDM's simplified objective: mean squared noise error per degree of freedom, t ~ U{0..T}."""
        B = batch.num_graphs
        t_int = torch.randint(0, self.fc.timesteps + 1, (B,), device=batch.pos.device)
        out = self._diffusion_error(batch, t_int, train=True)
        n_atoms = torch.bincount(batch.batch, minlength=B).float()
        per_mol = (out["err_x"] + out["err_h"]) / (n_atoms * (3 + self.feat_dim))
        return {
            "loss": per_mol.mean(),
            "loss_x": (out["err_x"] / (n_atoms * 3)).mean().detach(),
            "loss_h": (out["err_h"] / (n_atoms * self.feat_dim)).mean().detach(),
        }

    def log_likelihood(self, batch: Any) -> Tensor:
        """Single-sample estimate of EDM's variational lower bound on log p(x, h, N), nats per molecule."""
        T = self.fc.timesteps
        B, idx = batch.num_graphs, batch.batch
        device = batch.pos.device
        n_atoms = torch.bincount(idx, minlength=B)
        dims_x, dims_h = self._dims(n_atoms)
        # diffusion term, t ~ U{1..T}, times T
        t_int = torch.randint(1, T + 1, (B,), device=device)
        out = self._diffusion_error(batch, t_int, train=False)
        gamma_s = self.schedule.gamma((t_int - 1).float() / T)
        diffusion = T * 0.5 * vp.snr_weight(gamma_s, out["gamma_t"]) * (out["err_x"] + out["err_h"])
        # prior KL at t = 1
        gamma_1 = self.schedule.gamma(torch.ones(B, device=device))
        a2 = torch.sigmoid(-gamma_1)
        kl_x = vp.kl_to_standard_normal(a2 * scatter_sum((out["x"] ** 2).sum(-1), idx, B), 1 - a2, dims_x)
        kl_h = vp.kl_to_standard_normal(a2 * scatter_sum((out["h"] ** 2).sum(-1), idx, B), 1 - a2, dims_h)
        # reconstruction term at t = 0
        out0 = self._diffusion_error(batch, torch.zeros(B, dtype=torch.long, device=device), train=False)
        gamma_0 = out0["gamma_t"]
        nll_x0 = 0.5 * out0["err_x"] + vp.gaussian_nll_constant(dims_x, gamma_0)
        sigma_0 = torch.sigmoid(gamma_0).sqrt()[idx][:, None]
        zh = out0["zh"]
        onehot = nn.functional.one_hot(batch.atom_types, self.num_types).float()
        log_ph = vp.categorical_log_prob(onehot, zh[:, : self.num_types] / self.fc.type_scale, sigma_0 / self.fc.type_scale)
        if self.fc.include_charges:
            log_ph = log_ph + vp.discretized_gaussian_log_prob(
                batch.charges.float(), zh[:, -1] / self.fc.charge_scale, sigma_0[:, 0] / self.fc.charge_scale
            )
        nll_h0 = -scatter_sum(log_ph, idx, B)
        log_pn = self.stats.log_prob_n_atoms(n_atoms)
        return -(kl_x + kl_h + diffusion + nll_x0 + nll_h0) + log_pn

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
        """Ancestral sampling with ``steps`` (default ``family.sampling_steps``) evenly spaced steps."""
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
            mols.extend(self._sample_chunk(counts[sl], y_all[sl], mask_all[sl], steps, guidance, cpu_gen, progress))
        if cond:
            for key, value in cond.items():
                values = np.broadcast_to(np.asarray(value, dtype=float).ravel(), (n,))
                for m, v in zip(mols, values):
                    m.properties[f"target_{key}"] = float(v)
        return mols

    def _randn(self, shape: tuple[int, ...], gen: torch.Generator | None) -> Tensor:
        return torch.randn(shape, generator=gen).to(self.device)

    def _sample_chunk(self, counts, y, y_mask, steps, guidance, gen, progress) -> list[Molecule3D]:
        device = self.device
        B = counts.numel()
        idx = torch.repeat_interleave(torch.arange(B), counts).to(device)
        N = int(counts.sum())
        zx = remove_mean(self._randn((N, 3), gen), idx, B)
        zh = self._randn((N, self.feat_dim), gen)
        iterator = range(steps - 1, -1, -1)
        if progress:
            import sys

            from tqdm import tqdm

            iterator = tqdm(iterator, total=steps, desc="sampling", leave=False,
                            mininterval=0.5 if sys.stderr.isatty() else 30.0)
        for i in iterator:
            s = torch.full((B,), i / steps, device=device)
            t = torch.full((B,), (i + 1) / steps, device=device)
            gs, gt = self.schedule.gamma(s), self.schedule.gamma(t)
            eps_x, eps_h = self._eps(zx, zh, t, idx, B, y, y_mask, guidance)
            gsn, gtn = gs[idx][:, None], gt[idx][:, None]
            zx = vp.posterior_step(zx, eps_x, gsn, gtn, remove_mean(self._randn((N, 3), gen), idx, B))
            zh = vp.posterior_step(zh, eps_h, gsn, gtn, self._randn((N, self.feat_dim), gen))
            zx = remove_mean(zx, idx, B)  # keep the zero-CoM subspace against round-off
        t0 = torch.zeros(B, device=device)
        g0 = self.schedule.gamma(t0)[idx][:, None]
        eps_x, eps_h = self._eps(zx, zh, t0, idx, B, y, y_mask, guidance)
        x = vp.predict_x0(zx, eps_x, g0)
        h = vp.predict_x0(zh, eps_h, g0)
        types = h[:, : self.num_types].argmax(-1)
        charges = (
            torch.round(h[:, -1] / self.fc.charge_scale).long() if self.fc.include_charges else torch.zeros_like(types)
        )
        x, types, charges = x.cpu().numpy(), types.cpu().numpy(), charges.cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(counts.numpy())])
        return [
            Molecule3D(atom_types=types[a:b], positions=x[a:b].astype(np.float64), charges=charges[a:b])
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
