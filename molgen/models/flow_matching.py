"""``flow-matching``: equivariant conditional flow matching with optimal-transport paths.

Lipman, Chen, Ben-Hamu, Nickel & Le, "Flow Matching for Generative Modeling", ICLR 2023, with the
equivariant OT coupling of Klein, Krämer & Noé, "Equivariant flow matching", NeurIPS 2023 and
Song et al., "Equivariant Flow Matching with Hybrid Probability Transport" (EquiFM), NeurIPS 2023.

**Path.** A molecule is ``(x, h)`` as in every point-cloud family (zero centre-of-mass positions,
one-hot types x ``type_scale`` and formal charge x ``charge_scale``). Time runs from the prior at
``t = 0`` to the data at ``t = 1``. The prior ``(x0, h0)`` is a zero-CoM standard normal for the
positions and a standard normal for the features. Each prior sample is first aligned to its data
molecule (:mod:`molgen.sampling.align`): atom permutation by the Hungarian assignment and rotation
by Kabsch (proper rotations only), alternated ``align_iters`` times from the four principal-axes
starts, so the alignment is rotation equivariant. The prior carries no atom types, so "within
element types" reduces to: prior atoms are assigned to data atoms **by positions only** (squared
distances); the prior feature vector of an atom moves with its position (the prior is i.i.d. over
atoms, so this is still a prior sample). Then the conditional OT path is the straight line
``z_t = (1 - t) z0 + t z1`` with constant velocity ``u = z1 - z0``, for positions and features.

**Network and objective.** The shared :class:`~molgen.nn.dynamics.DynamicsNetwork` predicts the
**velocity** ``v(z_t, t, y)`` directly (not ``z1``: an ``z1``-prediction divided by ``1 - t`` blows up
at the data end); its position output is equivariant and mean-free, so the flow stays in the
zero-CoM subspace. Loss: ``|v - u|^2`` averaged over atoms x (3 + K) coordinates, mean over
molecules, ``t ~ U[0, 1]``. Labels are dropped during training as in the other families, which
gives classifier-free guidance ``v = (1 + w) v(y) - w v(no labels)`` and conditioning on any subset
of the trained properties.

**Sampling.** Integrate ``dz/dt = v`` from the prior at ``t = 0`` to ``t = 1`` with ``family.solver``
(``euler`` or ``heun``; ``rk4`` is accepted too) and ``family.sampling_steps`` equal steps
(20-100 are typical; ``--steps`` overrides). Heun costs two network calls per step. ``sample``
takes the base class's keyword arguments (``cond, n_atoms, steps, guidance, seed, batch_size,
progress``); all apply.

**Variants (measured in ``scripts/bench_learning.py``).** ``prediction: data`` reads the network's
outputs as the step to the clean molecule, ``z1_hat = z_t + net(z_t, t)``, trained with
``|z1_hat - z1|^2`` (every noise level weighted alike, where the velocity loss weights level ``t`` by
``1 / (1 - t)^2``); its velocity is ``net / (1 - t)`` and Euler sampling lands on the prediction at
the last step. ``time_alpha`` / ``time_beta`` draw training times from ``Beta(alpha, beta)``
(``alpha > beta`` visits the data end more often, where the molecule's fine geometry is set).
``atom_types: categorical`` generates types and charges with the masking flow of
:mod:`molgen.models.categorical` (cross-entropy weighted by ``type_loss_weight``) instead of
scaled one-hot Gaussians. Both sample with Euler steps (``solver: euler``, one network call per
step) and have no likelihood (``log_likelihood`` is ``None``).

**Likelihood.** ``log_likelihood`` solves the same ODE backwards from the data at ``t = 1`` to the
prior at ``t = 0`` (:func:`molgen.sampling.ode.log_likelihood`, instantaneous change of variables,
``family.likelihood_steps`` steps of ``family.solver``, guidance off) and adds ``log p(N)`` from the
training histogram: ``log p(x, h | y) + log p(N)`` in nats per molecule, positions with
``(n - 1) * 3`` degrees of freedom (zero-CoM subspace, EDM's convention). The divergence is the exact
Jacobian trace by default (``likelihood_trace: exact``; ``max_atoms x (3 + K)`` vector-Jacobian
products per network call, fine for QM9-size molecules on a GPU) or Hutchinson's unbiased estimate
with Rademacher noise (``likelihood_trace: hutchinson``, one product per call). Up to the ODE
discretization this is the model's exact density, not a bound. For the discrete atom types and
charges it is the density of the **continuous** (scaled one-hot) features, as for EDM's continuous
relaxation, **not** a discrete likelihood: it is not dequantized, so it is not comparable to a
likelihood of discrete molecules and can exceed zero as the feature marginals sharpen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import SampleChunk, register
from molgen.models.categorical import CategoricalAtoms, Tokens
from molgen.models.options import SampleOptions
from molgen.models.pointcloud import (PointCloudConfig, PointCloudGenerator, TimeSamplingConfig, check_time_sampling,
                                      training_times)
from molgen.nn.dynamics import DynamicsNetwork
from molgen.nn.graph import remove_mean, scatter_sum
from molgen.sampling import ode
from molgen.sampling.align import align_prior, apply_alignment

TRACES = ("exact", "hutchinson")
PREDICTIONS = ("velocity", "data")
ATOM_TYPES = ("gaussian", "categorical")


@dataclass
class FlowMatchingConfig(PointCloudConfig, TimeSamplingConfig):
    """Family options of ``flow-matching`` (YAML section ``family:``)."""

    sampling_steps: int = 50
    solver: str = "heun"  # euler | heun | rk4
    align_rotation: bool = True  # Kabsch-align the prior sample to the data molecule
    align_permutation: bool = True  # Hungarian-assign prior atoms to data atoms (positions only)
    align_iters: int = 2  # Hungarian/Kabsch alternations per principal-axes start
    likelihood_steps: int = 50
    likelihood_trace: str = "exact"  # exact | hutchinson
    prediction: str = "velocity"  # velocity | data (z1_hat = z_t + net; Euler sampling)
    atom_types: str = "gaussian"  # gaussian (scaled one-hot features) | categorical (masking flow)
    type_loss_weight: float = 1.0  # atom_types=categorical: weight of the types/charges cross-entropy


@register("flow-matching")
class EquivariantFlowMatching(PointCloudGenerator):
    """Equivariant OT flow matching on point clouds (see the module docstring).

    Args:
        cfg: run configuration; ``cfg.family`` is a :class:`FlowMatchingConfig`.
        stats: training-set statistics (atom-count histogram, label normalization).
    """

    config_cls = FlowMatchingConfig

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        if self.fc.solver not in ode.METHODS:
            raise MolgenError(f"unknown family.solver '{self.fc.solver}' (choose from: {', '.join(ode.METHODS)})")
        if self.fc.likelihood_trace not in TRACES:
            raise MolgenError(
                f"unknown family.likelihood_trace '{self.fc.likelihood_trace}' (choose from: {', '.join(TRACES)})")
        fc = self.fc
        for key, choices in (("prediction", PREDICTIONS), ("atom_types", ATOM_TYPES)):
            if getattr(fc, key) not in choices:
                raise MolgenError(f"unknown family.{key} '{getattr(fc, key)}' (choose from: {', '.join(choices)})")
        if self.stepwise and fc.solver != "euler":
            raise MolgenError("family.prediction=data and family.atom_types=categorical sample with Euler steps: "
                              f"set family.solver=euler (not '{fc.solver}')")
        check_time_sampling(fc)
        self.categorical = (CategoricalAtoms(self.num_types, fc.include_charges)
                            if fc.atom_types == "categorical" else None)
        in_dim, out_dim = ((self.categorical.in_dim, self.categorical.out_dim) if self.categorical
                           else (self.feat_dim, self.feat_dim))
        self.net = DynamicsNetwork(in_dim, len(stats.properties), cfg.backbone, out_dim=out_dim)

    @property
    def stepwise(self) -> bool:
        """Whether sampling is this family's own Euler loop (data prediction or categorical atoms)."""
        return self.fc.prediction == "data" or self.fc.atom_types == "categorical"

    def train_times(self, B: int, like: Tensor) -> Tensor:
        """``[B]`` times: ``Beta(time_alpha, time_beta)`` in training, else uniform."""
        t = training_times(self.fc, B, like, self.training)
        return torch.rand(B, device=like.device, dtype=like.dtype) if t is None else t

    def categorical_features(self, tok: Tokens, dtype: torch.dtype) -> Tensor:
        """Unmasked categorical tokens as the point-cloud features ``h`` that :meth:`decode` reads."""
        cat, fc = self.categorical, self.fc
        onehot = torch.nn.functional.one_hot(tok.types.clamp(max=cat.T - 1), self.num_types).to(dtype)
        parts = [onehot * fc.type_scale]
        if fc.include_charges:
            parts.append(cat.charge_values(tok).to(dtype)[:, None] * fc.charge_scale)
        return torch.cat(parts, -1)

    # ------------------------------------------------------------------ path
    def coupling(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Data ``(x1, h1)`` and the prior sample aligned to it ``(x0, h0)``, all ``[N, .]``."""
        B, batch_index = batch.num_graphs, batch.batch
        x1, h1 = self.positions(batch), self.features(batch)
        x0 = remove_mean(torch.randn_like(x1), batch_index, B)
        h0 = torch.randn_like(h1)
        if self.fc.align_rotation or self.fc.align_permutation:
            perm, rot = align_prior(x0, x1, batch_index, B, rotation=self.fc.align_rotation,
                                    permutation=self.fc.align_permutation, iters=self.fc.align_iters)
            x0, h0 = apply_alignment(x0, perm, rot, batch_index), h0[perm]
        return x0, h0, x1, h1

    # ------------------------------------------------------------------ protocol
    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Conditional flow matching: ``|v(z_t, t) - (z1 - z0)|^2`` per coordinate (``prediction:
        data``: ``|z_t + net - z1|^2``; categorical atoms: cross-entropy of their clean tokens)."""
        B, batch_index = batch.num_graphs, batch.batch
        x0, h0, x1, h1 = self.coupling(batch)
        t = self.train_times(B, x1)
        tn = t[batch_index][:, None]
        xt = (1 - tn) * x0 + tn * x1
        cat, data = self.categorical, self.fc.prediction == "data"
        if cat is not None:
            clean = cat.clean(batch)
            h_in = cat.features(cat.corrupt(clean, t[batch_index]), x1.dtype)
        else:
            h_in = (1 - tn) * h0 + tn * h1
        y, y_mask = self.labels(batch, train=True)
        ox, oh = self.net(xt, h_in, t, batch_index, B, y, y_mask)
        err_x = scatter_sum((((xt + ox - x1) if data else (ox - (x1 - x0))) ** 2).sum(-1), batch_index, B)
        n_atoms = torch.bincount(batch_index, minlength=B).to(err_x.dtype)
        if cat is not None:
            ce = scatter_sum(cat.cross_entropy(oh, clean), batch_index, B) / n_atoms
            loss_x = err_x / (n_atoms * 3)
            return {"loss": (loss_x + self.fc.type_loss_weight * ce).mean(),
                    "loss_x": loss_x.mean().detach(), "loss_h": ce.mean().detach()}
        err_h = scatter_sum((((h_in + oh - h1) if data else (oh - (h1 - h0))) ** 2).sum(-1), batch_index, B)
        return {
            "loss": ((err_x + err_h) / (n_atoms * (3 + self.feat_dim))).mean(),
            "loss_x": (err_x / (n_atoms * 3)).mean().detach(),
            "loss_h": (err_h / (n_atoms * self.feat_dim)).mean().detach(),
        }

    def velocity(self, batch_index: Tensor, num_graphs: int, y: Tensor, y_mask: Tensor, guidance: float = 0.0,
                 composition: str = "joint") -> ode.Field:
        """The learned field as an ODE right-hand side ``(t, (x, h)) -> (vx, vh)``."""

        def field(t: float, z: ode.State) -> ode.State:
            x, h = z
            tb = torch.full((num_graphs,), float(t), device=x.device, dtype=x.dtype)
            vx, vh = self.guided(self.net, x, h, tb, batch_index, num_graphs, y, y_mask, guidance, composition)
            return vx.to(x.dtype), vh.to(h.dtype)

        return field

    def log_likelihood(self, batch: Any, *, exact: bool | None = None, steps: int | None = None,
                       seed: int | None = None) -> Tensor | None:
        """``log p(x, h | y) + log p(N)`` in nats per molecule ``[B]`` by the ODE (module docstring).

        Args:
            exact: exact Jacobian trace (default: ``family.likelihood_trace == "exact"``), else Hutchinson.
            steps: solver steps (default ``family.likelihood_steps``).
            seed: seed of Hutchinson's probe noise (``None``: the global torch generator).
        """
        if self.stepwise:
            return None  # data prediction / categorical atoms: no tractable likelihood (module docstring)
        B, batch_index = batch.num_graphs, batch.batch
        exact = self.fc.likelihood_trace == "exact" if exact is None else exact
        x, h = self.positions(batch), self.features(batch)
        y, y_mask = self.labels(batch, train=False)
        n_atoms = torch.bincount(batch_index, minlength=B)
        ll = ode.log_likelihood(
            self.velocity(batch_index, B, y, y_mask), (x, h), batch_index, B, list(self.dims(n_atoms)),
            t_data=1.0, t_prior=0.0, steps=steps or self.fc.likelihood_steps, method=self.fc.solver,
            exact=exact, seed=seed,
        )
        return ll + self.stats.log_prob_n_atoms(n_atoms).to(ll.dtype)

    def sample_state(self, chunk: SampleChunk, opts: SampleOptions, gen: torch.Generator,
                     progress: bool) -> tuple[Tensor, Tensor]:
        """Integrate the learned field from the prior (t = 0) to the data (t = 1) in ``opts.steps`` steps."""
        if self.stepwise:
            return self._sample_stepwise(chunk, opts, gen, progress)
        B, steps = chunk.counts.numel(), opts.steps
        batch_index, zx, zh = self.prior(chunk.counts, gen)
        field = self.velocity(batch_index, B, chunk.y, chunk.y_mask, opts.guidance, opts.composition)
        z: ode.State = (zx, zh)
        for i in self.steps_iter(steps, progress):  # i = steps - 1, ..., 0
            z = ode.ode_step(field, (steps - 1 - i) / steps, z, 1.0 / steps, self.fc.solver)
        x, h = z
        return remove_mean(x, batch_index, B), h

    def _sample_stepwise(self, chunk: SampleChunk, opts: SampleOptions, gen: torch.Generator,
                         progress: bool) -> tuple[Tensor, Tensor]:
        """Euler steps of the data-predicting field (``z += dt / (1 - t) * net``, landing on the
        prediction at the last step) or of the velocity, with the CTMC step of categorical atoms."""
        B, steps, cat = chunk.counts.numel(), opts.steps, self.categorical
        batch_index, zx, zh = self.prior(chunk.counts, gen)
        tok = cat.masked(zx.shape[0], zx.device) if cat is not None else None
        dt = 1.0 / steps
        for i in self.steps_iter(steps, progress):  # i = steps - 1, ..., 0
            t = (steps - 1 - i) / steps
            h_in = cat.features(tok, zx.dtype) if cat is not None else zh
            tb = torch.full((B,), t, device=zx.device, dtype=zx.dtype)
            ox, oh = self.guided(self.net, zx, h_in, tb, batch_index, B, chunk.y, chunk.y_mask, **opts.guide)
            scale = dt / (1.0 - t) if self.fc.prediction == "data" else dt
            zx = remove_mean(zx + scale * ox.to(zx.dtype), batch_index, B)
            if cat is not None:
                tok = cat.step(tok, oh, t, dt, gen)
            else:
                zh = zh + scale * oh.to(zh.dtype)
        return zx, (self.categorical_features(tok, zx.dtype) if cat is not None else zh)
