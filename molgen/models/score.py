"""``score``: E(3)-equivariant score model with a variance-exploding SDE (VE-SDE).

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021 (the SDE, the predictor-corrector sampler, the
probability-flow ODE and its likelihood); Song & Ermon, "Generative Modeling by Estimating Gradients
of the Data Distribution" (NCSN), NeurIPS 2019 and "Improved Techniques for Training Score-Based
Generative Models" (NCSNv2), NeurIPS 2020 (the choice of ``sigma_max``, the Langevin corrector).

**Process.** A molecule is ``z = (x, h)`` as in every point-cloud family (zero centre-of-mass
positions in Å, one-hot types x ``type_scale`` and formal charge x ``charge_scale``). The VE-SDE
``dz = sqrt(d sigma^2 / dt) dw`` perturbs it to ``z_t = z_0 + sigma(t) eps`` with the geometric
schedule ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``t in [0, 1]``, positions and features
alike; the position noise is drawn in the zero-CoM subspace (``remove_mean``), so every state, every
sampler update and the prior ``N(0, sigma_max^2 I)`` stay there.

**Noise range.** ``sigma_min = 0.01``: well below the smallest scale that decides a molecule (the
0.1 spacing of scaled charges, the 3-10 pm bond-order margins). ``sigma_max = 30``: NCSNv2's
technique 1 asks for the largest Euclidean distance between two training data points, and a data
point is a whole molecule, a vector of ``3 n`` coordinates. Measured on 20,000 QM9 training molecules
(zero-CoM, pairs with equal atom count): the largest molecule-molecule distance is 30.8 Å (25-31 Å
for 13-29 atoms); the median molecule norm is 10 Å, the largest 20 Å. (The largest *atom-atom*
distance, 11.6 Å, is not the quantity the technique refers to.) The prior then covers the data:
its per-coordinate variance 900 Å^2 against the data's ~2 Å^2 makes the prior mismatch of the
likelihood negligible (~(2 / 900)^2 / 4 ~ 1e-6 nats per degree of freedom). ``sigma_max`` is a config key.

**Network.** The shared :class:`~molgen.nn.dynamics.DynamicsNetwork` predicts the noise ``eps`` and
the score is ``s = -eps_hat / sigma`` (NCSN's ``s(z, sigma) sigma`` parametrization: the target has
unit scale at every noise level, so the network output stays O(1)). Its inputs are preconditioned
as Karras et al. (EDM, 2022) with ``sigma_data = 1``: the network sees ``z / sqrt(1 + sigma^2)``, which
is exactly the state of a variance-preserving process at the same signal-to-noise ratio
``1 / sigma^2`` (the input scale Hoogeboom et al.'s ``diffusion`` family sees), so the backbone's
distance features (RBFs up to ``rbf_max`` Å) are meaningful at every noise level. The time input is
``t`` itself, which is the normalized ``log sigma`` (``(log sigma - log sigma_min) /
log(sigma_max / sigma_min)``). The vector output is mean-free and E(3) equivariant, the feature
output invariant.

**Objective.** Denoising score matching with ``lambda(sigma) = sigma^2``:
``sigma^2 |s_theta + eps / sigma|^2 = |eps_hat - eps|^2``, ``t ~ U[0, 1]``, averaged over atoms x
(3 + K) coordinates per molecule (the per-molecule normalization of the other families), mean over
molecules. Labels are dropped during training (``cond_drop_prob``, ``prop_drop_prob``), which gives
classifier-free guidance on the score, ``(1 + w) s(y) - w s(no labels)``, and conditioning on any
subset of the trained properties.

**Sampling** (``family.sampler``, or ``sample(..., sampler=...)`` / ``molgen generate --sample-opt
sampler=ode``):

- ``pc`` (default): predictor-corrector. ``steps`` noise levels ``sigma(t_i)``, ``t_i`` evenly spaced
  from 1 to 0; at each, ``corrector_steps`` Langevin steps with signal-to-noise ratio ``snr`` (step
  ``2 (snr |xi| / |s|)^2``, the norms pooled over the chunk of molecules as Song et al. average them
  over the batch: per-molecule norms of a few dozen coordinates make the step depend on the state,
  which inflated the variance of a Gaussian by 15%), then the reverse-diffusion predictor to the next
  level (0 after the last), whose noise-free mean is returned. ``steps x (1 + corrector_steps)``
  network calls; a molecule's sample depends on the other molecules of its chunk through the step.
- ``ode``: the probability-flow ODE ``dz/dt = -1/2 d(sigma^2)/dt s = sigma(t) log(sigma_max /
  sigma_min) eps_hat`` from ``t = 1`` to ``t = 0`` with :func:`molgen.sampling.ode.odeint`
  (``family.solver``: ``euler``, ``heun`` or ``rk4``), then one Tweedie denoising step at
  ``sigma_min``. Deterministic given the prior draw; 50-200 Heun steps are typical.

``sample`` takes the protocol's keywords and :class:`ScoreSampleOptions`: ``steps``, ``guidance``,
``composition`` (``joint`` | ``product``) plus ``sampler``, ``snr``, ``corrector_steps`` and ``solver``
(defaults from the config; ``snr`` and ``corrector_steps`` only affect ``pc``, ``solver`` only ``ode``).

**Likelihood.** ``log_likelihood`` integrates the probability-flow ODE from the data at ``t = 0`` to
the prior at ``t = 1`` with :func:`molgen.sampling.ode.log_likelihood` (instantaneous change of
variables; guidance off). That helper assumes a standard normal prior, so the ODE runs in the scaled
coordinates ``w = z / sigma_max`` (prior ``N(0, I)``, same divergence) and the log-Jacobian
``-D log sigma_max`` of the scaling is added, ``D = (n - 1) * 3 + n * K``. With ``log p(N)`` from the
training histogram the result is ``log p(x, h | y) + log p(N)`` in nats per molecule: the **exact**
log-density of the PF-ODE model (whose data-end marginal is the data convolved with
``N(0, sigma_min^2)``), up to the ODE solver's error; not a bound. Positions count ``(n - 1) * 3``
degrees of freedom (zero-CoM subspace, EDM's convention). Solver: ``family.likelihood_steps`` steps
of ``family.likelihood_solver``, RK4 by default: the VE flow grows like ``sigma(t)``, and on the
Gaussian test case (7 atoms) Heun's trajectory error costs 0.3 nats at 100 steps, RK4's 0.003 at 50
(the same 200 network calls). The trace is exact by default (``likelihood_trace: exact``,
``max_atoms x (3 + K)`` vector-Jacobian products per network call: fine for QM9-size molecules on a
GPU, slow on a CPU) or Hutchinson's unbiased estimate with Rademacher noise (``hutchinson``, one
product per call). It is the density of the **continuous** (scaled one-hot) type and charge
features, not dequantized, so it is not a likelihood of discrete molecules (it can exceed 0 as the
feature marginals sharpen) and not comparable to EDM's bound on its discretized likelihood. It runs
in float32 (float64 for a double model) with autocast off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import SampleChunk, register
from molgen.models.options import SampleOptions
from molgen.models.pointcloud import PointCloudConfig, PointCloudGenerator
from molgen.nn.dynamics import DynamicsNetwork
from molgen.nn.graph import remove_mean, scatter_sum
from molgen.sampling import ode

SAMPLERS = ("pc", "ode")
TRACES = ("exact", "hutchinson")


@dataclass
class ScoreConfig(PointCloudConfig):
    """Family options of ``score`` (YAML section ``family:``)."""

    sigma_min: float = 0.01
    sigma_max: float = 30.0  # ~ the largest distance between two QM9 molecules (NCSNv2 technique 1)
    sampler: str = "pc"  # pc | ode
    snr: float = 0.16  # Langevin corrector signal-to-noise ratio (Song et al.'s VE value)
    corrector_steps: int = 1
    solver: str = "heun"  # euler | heun | rk4: the probability-flow ODE sampler
    likelihood_steps: int = 50
    likelihood_solver: str = "rk4"  # euler | heun | rk4: the PF-ODE of log_likelihood
    likelihood_trace: str = "exact"  # exact | hutchinson


@dataclass(frozen=True)
class ScoreSampleOptions(SampleOptions):
    """``score``'s sampler options (defaults: the ``family:`` keys of the same names)."""

    sampler: str = "pc"
    snr: float = 0.16
    corrector_steps: int = 1
    solver: str = "heun"

    def validate(self) -> None:
        super().validate()
        if self.sampler not in SAMPLERS:
            raise MolgenError(f"unknown sampler '{self.sampler}' (choose from: {', '.join(SAMPLERS)})")
        if self.solver not in ode.METHODS:
            raise MolgenError(f"unknown ODE solver '{self.solver}' (choose from: {', '.join(ode.METHODS)})")
        if self.snr < 0 or self.corrector_steps < 0:
            raise MolgenError("snr and corrector_steps must be non-negative")


@register("score")
class ScoreModel(PointCloudGenerator):
    """Equivariant VE-SDE score model on point clouds (see the module docstring).

    Args:
        cfg: run configuration; ``cfg.family`` is a :class:`ScoreConfig`.
        stats: training-set statistics (atom-count histogram, label normalization).
    """

    config_cls = ScoreConfig
    options_cls = ScoreSampleOptions

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        fc = self.fc
        if not 0 < fc.sigma_min < fc.sigma_max:
            raise MolgenError(f"family.sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max, "
                              f"got {fc.sigma_min} and {fc.sigma_max}")
        if fc.likelihood_solver not in ode.METHODS:
            raise MolgenError(f"unknown family.likelihood_solver '{fc.likelihood_solver}' "
                              f"(choose from: {', '.join(ode.METHODS)})")
        if fc.likelihood_trace not in TRACES:
            raise MolgenError(
                f"unknown family.likelihood_trace '{fc.likelihood_trace}' (choose from: {', '.join(TRACES)})")
        self.sample_options()  # validates the config's sampler, snr, corrector_steps, solver
        self.log_ratio = math.log(fc.sigma_max / fc.sigma_min)
        self.net = DynamicsNetwork(self.feat_dim, len(stats.properties), cfg.backbone)

    # ------------------------------------------------------------------ process
    def sigma(self, t: Tensor) -> Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` for ``t [B]`` in [0, 1]."""
        return self.fc.sigma_min * torch.exp(t * self.log_ratio)

    def eps(self, zx: Tensor, zh: Tensor, t: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor,
            y_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted noise ``(eps_x [N, 3] mean-free, eps_h [N, K])`` of the noisy state at times ``t [B]``.

        The network sees the VP-scaled state ``z / sqrt(1 + sigma^2)`` (see the module docstring).
        """
        c_in = torch.rsqrt(1 + self.sigma(t) ** 2)[batch_index][:, None]
        ex, eh = self.net(zx * c_in, zh * c_in, t, batch_index, num_graphs, y, y_mask)
        return ex.to(zx.dtype), eh.to(zh.dtype)

    def score(self, zx: Tensor, zh: Tensor, t: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor,
              y_mask: Tensor, guidance: float = 0.0, composition: str = "joint") -> tuple[Tensor, Tensor]:
        """The (guided) score ``-eps_hat / sigma(t)`` of the noisy state, ``([N, 3], [N, K])``."""
        ex, eh = self.guided(self.eps, zx, zh, t, batch_index, num_graphs, y, y_mask, guidance, composition)
        inv = (1.0 / self.sigma(t))[batch_index][:, None]
        return -ex * inv, -eh * inv

    def pf_ode(self, batch_index: Tensor, num_graphs: int, y: Tensor, y_mask: Tensor, guidance: float = 0.0,
               scale: float = 1.0, composition: str = "joint") -> ode.Field:
        """The probability-flow ODE ``dz/dt = sigma(t) log(sigma_max / sigma_min) eps_hat(z, t)``.

        With ``scale`` ``c``, the same ODE in the coordinates ``w = z / c``.
        """

        def field(t: float, w: ode.State) -> ode.State:
            x, h = w
            tb = torch.full((num_graphs,), float(t), device=x.device, dtype=x.dtype)
            ex, eh = self.guided(self.eps, x * scale, h * scale, tb, batch_index, num_graphs, y, y_mask, guidance,
                                 composition)
            rate = float(self.sigma(torch.tensor(float(t), dtype=torch.float64))) * self.log_ratio / scale
            return rate * ex, rate * eh

        return field

    # ------------------------------------------------------------------ protocol
    def dsm_error(self, batch: Any, t: Tensor, eps_x: Tensor, eps_h: Tensor, train: bool
                  ) -> tuple[Tensor, Tensor]:
        """Per-molecule ``|eps_hat - eps|^2`` ``([B], [B])`` of positions and features for given noise.

        ``eps_x`` ``[N, 3]`` must be mean-free per molecule; ``t`` ``[B]``.
        """
        B, batch_index = batch.num_graphs, batch.batch
        x, h = self.positions(batch), self.features(batch)
        s = self.sigma(t)[batch_index][:, None]
        zx, zh = x + s * eps_x, h + s * eps_h
        y, y_mask = self.labels(batch, train)
        ex, eh = self.eps(zx, zh, t, batch_index, B, y, y_mask)
        err_x = scatter_sum(((ex - eps_x) ** 2).sum(-1), batch_index, B)
        err_h = scatter_sum(((eh - eps_h) ** 2).sum(-1), batch_index, B)
        return err_x, err_h

    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Denoising score matching, ``lambda(sigma) = sigma^2``, per coordinate, ``t ~ U[0, 1]``."""
        B, batch_index = batch.num_graphs, batch.batch
        x = self.positions(batch)
        t = torch.rand(B, device=x.device, dtype=x.dtype)
        eps_x = remove_mean(torch.randn_like(x), batch_index, B)
        eps_h = torch.randn(x.shape[0], self.feat_dim, device=x.device, dtype=x.dtype)
        err_x, err_h = self.dsm_error(batch, t, eps_x, eps_h, train=True)
        n_atoms = torch.bincount(batch_index, minlength=B).to(err_x.dtype)
        return {
            "loss": ((err_x + err_h) / (n_atoms * (3 + self.feat_dim))).mean(),
            "loss_x": (err_x / (n_atoms * 3)).mean().detach(),
            "loss_h": (err_h / (n_atoms * self.feat_dim)).mean().detach(),
        }

    def log_likelihood(self, batch: Any, *, exact: bool | None = None, steps: int | None = None,
                       seed: int | None = 0) -> Tensor:
        """``log p(x, h | y) + log p(N)`` in nats per molecule ``[B]`` by the PF-ODE (module docstring).

        Args:
            exact: exact Jacobian trace (default: ``family.likelihood_trace == "exact"``), else Hutchinson.
            steps: solver steps (default ``family.likelihood_steps``).
            seed: seed of Hutchinson's probe noise (``None``: the global torch generator).
        """
        B, batch_index = batch.num_graphs, batch.batch
        exact = self.fc.likelihood_trace == "exact" if exact is None else exact
        n_atoms = torch.bincount(batch_index, minlength=B)
        dims_x, dims_h = self.dims(n_atoms)
        c = self.fc.sigma_max
        with torch.autocast(device_type=batch.pos.device.type, enabled=False):
            dtype = torch.promote_types(next(self.parameters()).dtype, torch.float32)  # fp32, or fp64 models
            x, h = self.positions(batch).to(dtype), self.features(batch).to(dtype)
            y, y_mask = self.labels(batch, train=False)
            y, y_mask = y.to(x.dtype), y_mask.to(x.dtype)
            ll_w = ode.log_likelihood(
                self.pf_ode(batch_index, B, y, y_mask, scale=c), (x / c, h / c), batch_index, B, [dims_x, dims_h],
                t_data=0.0, t_prior=1.0, steps=steps or self.fc.likelihood_steps, method=self.fc.likelihood_solver,
                exact=exact, seed=seed,
            )
        log_jac = -(dims_x + dims_h).to(ll_w.dtype) * math.log(c)  # p_z(z) = p_w(z / c) / c^D
        return ll_w + log_jac + self.stats.log_prob_n_atoms(n_atoms).to(ll_w.dtype)

    # ------------------------------------------------------------------ sampling
    def sample_state(self, chunk: SampleChunk, opts: ScoreSampleOptions, gen: torch.Generator,
                     progress: bool) -> tuple[Tensor, Tensor]:
        """``opts.sampler``: predictor-corrector (``pc``) or the probability-flow ODE (``ode``)."""
        if opts.sampler == "ode":
            return self._sample_ode(chunk, opts, gen, progress)
        return self._sample_pc(chunk, opts, gen, progress)

    def _noise(self, batch_index: Tensor, B: int, N: int, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        return remove_mean(self.randn((N, 3), gen), batch_index, B), self.randn((N, self.feat_dim), gen)

    def _sample_pc(self, chunk: SampleChunk, opts: ScoreSampleOptions, gen: torch.Generator | None,
                   progress: bool) -> tuple[Tensor, Tensor]:
        """Predictor-corrector: Langevin corrector, then the reverse-diffusion predictor, per level."""
        y, y_mask, steps, guide = chunk.y, chunk.y_mask, opts.steps, opts.guide
        B = chunk.counts.numel()
        batch_index, zx, zh = self.prior(chunk.counts, gen)
        N, device = zx.shape[0], zx.device
        zx, zh = zx * self.fc.sigma_max, zh * self.fc.sigma_max
        times = torch.linspace(1.0, 0.0, steps) if steps > 1 else torch.ones(1)
        sigmas = self.sigma(times.double()).tolist() + [0.0]  # the last predictor step goes to sigma = 0
        for i in self.steps_iter(steps, progress):
            k = steps - 1 - i  # 0 .. steps-1, from sigma_max down
            t = torch.full((B,), float(times[k]), device=device)
            sig, sig_next = sigmas[k], sigmas[k + 1]
            for _ in range(opts.corrector_steps):
                sx, sh = self.score(zx, zh, t, batch_index, B, y, y_mask, **guide)
                nx, nh = self._noise(batch_index, B, N, gen)
                # Song et al.'s step 2 (snr |xi| / |s|)^2 with the norms pooled over the chunk (they
                # average them over the batch): per-molecule norms of a few dozen coordinates
                # fluctuate so much that the step correlates with the state (+15% variance on a Gaussian)
                grad_sq = (sx ** 2).sum() + (sh ** 2).sum()
                noise_sq = (nx ** 2).sum() + (nh ** 2).sum()
                step = 2 * opts.snr ** 2 * noise_sq / grad_sq.clamp(min=1e-30)
                zx = zx + step * sx + (2 * step).sqrt() * nx
                zh = zh + step * sh + (2 * step).sqrt() * nh
            sx, sh = self.score(zx, zh, t, batch_index, B, y, y_mask, **guide)
            var = sig ** 2 - sig_next ** 2  # reverse-diffusion predictor of the discretized VE-SDE
            zx, zh = zx + var * sx, zh + var * sh
            if sig_next > 0:  # the last step returns the noise-free mean
                nx, nh = self._noise(batch_index, B, N, gen)
                zx, zh = zx + math.sqrt(var) * nx, zh + math.sqrt(var) * nh
            zx = remove_mean(zx, batch_index, B)  # keep the zero-CoM subspace against round-off
        return zx, zh

    def _sample_ode(self, chunk: SampleChunk, opts: ScoreSampleOptions, gen: torch.Generator | None,
                    progress: bool) -> tuple[Tensor, Tensor]:
        """The probability-flow ODE from the prior (t = 1) to t = 0, then Tweedie's denoising step."""
        counts, y, y_mask, steps = chunk.counts, chunk.y, chunk.y_mask, opts.steps
        guidance, composition = opts.guidance, opts.composition
        B = counts.numel()
        batch_index, zx, zh = self.prior(counts, gen)
        c = self.fc.sigma_max
        zx, zh = ode.odeint(self.pf_ode(batch_index, B, y, y_mask, guidance, composition=composition), (zx * c, zh * c),
                            1.0, 0.0, steps,
                            opts.solver, progress=progress)
        t0 = torch.zeros(B, device=zx.device)
        ex, eh = self.guided(self.eps, zx, zh, t0, batch_index, B, y, y_mask, guidance, composition)
        s0 = self.fc.sigma_min
        return remove_mean(zx - s0 * ex, batch_index, B), zh - s0 * eh
