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

``time_alpha`` / ``time_beta`` (default 1, 1: EDM's uniform times) draw training times from a Beta
law; ``time_beta > 1`` spends more of training at low noise, where EDM's distance rules are decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.models.base import SampleChunk, register
from molgen.models.options import SampleOptions
from molgen.models.pointcloud import (PointCloudConfig, PointCloudGenerator, TimeSamplingConfig, check_time_sampling,
                                      training_times)
from molgen.nn.dynamics import DynamicsNetwork
from molgen.nn.graph import remove_mean, scatter_sum
from molgen.sampling import vp
from molgen.sampling.schedules import make_schedule


@dataclass
class DiffusionConfig(PointCloudConfig, TimeSamplingConfig):
    """Family options of ``diffusion`` (YAML section ``family:``)."""

    timesteps: int = 1000
    schedule: str = "polynomial_2"
    precision: float = 1e-5


@register("diffusion")
class EquivariantDiffusion(PointCloudGenerator):
    config_cls = DiffusionConfig

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        check_time_sampling(self.fc)
        self.schedule = make_schedule(self.fc.schedule, self.fc.timesteps, self.fc.precision)
        self.net = DynamicsNetwork(self.feat_dim, len(stats.properties), cfg.backbone)

    # ------------------------------------------------------------------ protocol
    def _diffusion_error(self, batch: Any, t_int: Tensor, train: bool) -> dict[str, Tensor]:
        """Noise the batch at integer times ``t_int`` [B] and return per-molecule squared errors."""
        T = self.fc.timesteps
        B, batch_index = batch.num_graphs, batch.batch
        x = self.positions(batch)
        h = self.features(batch)
        t = t_int.float() / T
        gamma_t = self.schedule.gamma(t)
        g = gamma_t[batch_index][:, None]
        eps_x = remove_mean(torch.randn_like(x), batch_index, B)
        eps_h = torch.randn_like(h)
        zx, zh = vp.noise(x, eps_x, g), vp.noise(h, eps_h, g)
        y, y_mask = self.labels(batch, train)
        eps_hat_x, eps_hat_h = self.net(zx, zh, t, batch_index, B, y, y_mask)
        err_x = scatter_sum(((eps_x - eps_hat_x) ** 2).sum(-1), batch_index, B)
        err_h = scatter_sum(((eps_h - eps_hat_h) ** 2).sum(-1), batch_index, B)
        return {"x": x, "h": h, "zh": zh, "err_x": err_x, "err_h": err_h, "gamma_t": gamma_t}

    def loss(self, batch: Any) -> dict[str, Tensor]:
        """EDM's simplified objective: mean squared noise error per degree of freedom, t ~ U{0..T}
        (in training ``t = round(T u)``, ``u ~ Beta(time_alpha, time_beta)``, where those are set)."""
        B, T = batch.num_graphs, self.fc.timesteps
        u = training_times(self.fc, B, batch.pos, self.training)
        t_int = (torch.randint(0, T + 1, (B,), device=batch.pos.device) if u is None
                 else torch.round(u * T).long())
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
        B, batch_index = batch.num_graphs, batch.batch
        device = batch.pos.device
        n_atoms = torch.bincount(batch_index, minlength=B)
        dims_x, dims_h = self.dims(n_atoms)
        # diffusion term, t ~ U{1..T}, times T
        t_int = torch.randint(1, T + 1, (B,), device=device)
        out = self._diffusion_error(batch, t_int, train=False)
        gamma_s = self.schedule.gamma((t_int - 1).float() / T)
        diffusion = T * 0.5 * vp.snr_weight(gamma_s, out["gamma_t"]) * (out["err_x"] + out["err_h"])
        # prior KL at t = 1
        gamma_1 = self.schedule.gamma(torch.ones(B, device=device))
        a2 = torch.sigmoid(-gamma_1)
        kl_x = vp.kl_to_standard_normal(a2 * scatter_sum((out["x"] ** 2).sum(-1), batch_index, B), 1 - a2, dims_x)
        kl_h = vp.kl_to_standard_normal(a2 * scatter_sum((out["h"] ** 2).sum(-1), batch_index, B), 1 - a2, dims_h)
        # reconstruction term at t = 0
        out0 = self._diffusion_error(batch, torch.zeros(B, dtype=torch.long, device=device), train=False)
        gamma_0 = out0["gamma_t"]
        nll_x0 = 0.5 * out0["err_x"] + vp.gaussian_nll_constant(dims_x, gamma_0)
        sigma_0 = torch.sigmoid(gamma_0).sqrt()[batch_index][:, None]
        zh = out0["zh"]
        onehot = nn.functional.one_hot(batch.atom_types, self.num_types).float()
        log_ph = vp.categorical_log_prob(onehot, zh[:, : self.num_types] / self.fc.type_scale, sigma_0 / self.fc.type_scale)
        if self.fc.include_charges:
            log_ph = log_ph + vp.discretized_gaussian_log_prob(
                batch.charges.float(), zh[:, -1] / self.fc.charge_scale, sigma_0[:, 0] / self.fc.charge_scale
            )
        nll_h0 = -scatter_sum(log_ph, batch_index, B)
        log_pn = self.stats.log_prob_n_atoms(n_atoms)
        return -(kl_x + kl_h + diffusion + nll_x0 + nll_h0) + log_pn

    def sample_state(self, chunk: SampleChunk, opts: SampleOptions, gen: torch.Generator,
                     progress: bool) -> tuple[Tensor, Tensor]:
        """Ancestral sampling with ``opts.steps`` evenly spaced steps of the trained chain."""
        y, y_mask, steps, guide = chunk.y, chunk.y_mask, opts.steps, opts.guide
        device, B = self.device, chunk.counts.numel()
        batch_index, zx, zh = self.prior(chunk.counts, gen)
        N = zx.shape[0]
        for i in self.steps_iter(steps, progress):
            s = torch.full((B,), i / steps, device=device)
            t = torch.full((B,), (i + 1) / steps, device=device)
            gs, gt = self.schedule.gamma(s), self.schedule.gamma(t)
            eps_x, eps_h = self.guided(self.net, zx, zh, t, batch_index, B, y, y_mask, **guide)
            gsn, gtn = gs[batch_index][:, None], gt[batch_index][:, None]
            zx = vp.posterior_step(zx, eps_x, gsn, gtn, remove_mean(self.randn((N, 3), gen), batch_index, B))
            zh = vp.posterior_step(zh, eps_h, gsn, gtn, self.randn((N, self.feat_dim), gen))
            zx = remove_mean(zx, batch_index, B)  # keep the zero-CoM subspace against round-off
        t0 = torch.zeros(B, device=device)
        g0 = self.schedule.gamma(t0)[batch_index][:, None]
        eps_x, eps_h = self.guided(self.net, zx, zh, t0, batch_index, B, y, y_mask, **guide)
        return vp.predict_x0(zx, eps_x, g0), vp.predict_x0(zh, eps_h, g0)
