"""``ebm``: an E(3)-invariant energy-based model of molecules, trained by denoising score matching.

The model is a scalar energy per molecule and noise level, ``p_sigma(x, h | y) ∝ exp(-E(x, h, sigma | y))``
over zero centre-of-mass positions ``x`` and continuous features ``h`` (scaled one-hot atom types
and formal charges, see :mod:`molgen.models.pointcloud`)::

    E(x, h, sigma | y) = (|x|^2 + |h|^2) / (2 (sigma^2 + c^2))  +  E_theta(x, h, sigma, y) / sigma

``E_theta`` sums a small MLP of the shared backbone's invariant node scalars over the atoms
(:class:`EnergyNetwork`); the backbone sees positions only through relative vectors, so ``E`` is
E(3) invariant (rotations, reflections, translations; ``|x|^2`` is taken after removing the centre
of mass) and its position gradient is E(3) equivariant with zero sum over the atoms. Design choices:

* **Objective: denoising score matching** (Vincent 2011) of the energy gradient across noise levels,
  as in NCSN (Song & Ermon, NeurIPS 2019) with the score parametrized as ``-grad E`` (Salimans & Ho,
  "Should EBMs model the energy or the score?", 2021). With ``x~ = x + sigma eps`` and weight
  ``lambda(sigma) = sigma^2`` the loss is ``|sigma (-grad E(x~)) + eps|^2`` per degree of freedom,
  ``sigma`` log-uniform on ``[sigma_min, sigma_max]``; the gradient is taken with
  ``create_graph=True`` so the loss backpropagates through it. DSM was chosen over contrastive
  divergence with a replay buffer because it is a plain regression (stable, no inner MCMC chain
  during training, no buffer state in checkpoints or across DDP ranks), it trains every noise
  level that annealed sampling visits, and it costs one double-backward per step instead of tens
  of Langevin steps.
* **Parametrization:** the ``1 / sigma`` factor makes the network's gradient an ``O(1)`` noise
  prediction at every level (NCSNv2's ``s(x) / sigma``); the analytic first term is the exact
  energy of Gaussian data of scale ``c`` (``base_scale``) noised to ``sigma``. It dominates at large
  ``sigma``, where atoms sit beyond the backbone's radial basis and a learned energy would be flat,
  and the network learns the rest. The noise level enters the condition encoder as
  ``t = log(sigma / sigma_min) / log(sigma_max / sigma_min)``.
* **Sampling: annealed Langevin dynamics** (:mod:`molgen.sampling.langevin`) from
  ``sigma_max * N(0, I)``: ``steps`` (``family.sampling_steps``) steps in total over
  ``round(steps / steps_per_level)`` geometric noise levels from ``sigma_max`` to ``sigma_min``, step
  size ``step_size * sigma^2 / sigma_min^2``, optionally Metropolis-adjusted (``mala``), positions
  kept in the zero-CoM subspace; ``denoise`` adds Tweedie's final step ``z - sigma_min^2 grad E``
  (one more energy evaluation, not counted in ``steps``).
* **Conditioning and guidance on energies.** Labels with a mask and label dropout as every
  point-cloud family. Classifier-free guidance combines energies,
  ``E_w = (1 + w) E(x | y) - w E(x | ∅)`` (``composition="joint"``).
* **Composition (product of experts).** ``composition="product"`` conditions on each given property
  separately and multiplies the experts: ``p(x | a, b) ∝ p(x | a) p(x | b) / p(x)`` (conditionally
  independent properties given x), i.e. for the P properties given for a molecule::

      E = sum_p E(x | y_p only) - (P - 1) E(x | ∅)

  With guidance each expert is guided, ``sum_p [(1 + w) E(x | y_p) - w E(x | ∅)] - (P - 1) E(x | ∅)``
  ``= (1 + w) sum_p E(x | y_p) - (P - 1 + w P) E(x | ∅)``. With one property it equals "joint".
  ``family.composition`` is the default; ``sample(..., composition=...)`` overrides it (the CLI's
  ``--sample-opt composition=product``).

``log_likelihood`` returns ``None``: the normalizer of ``exp(-E)`` is intractable (the metrics suite's
KDE on oracle embeddings is the sample-based proxy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from molgen.config import BackboneConfig, RunConfig
from molgen.data.graphs import DatasetStats
from molgen.errors import MolgenError
from molgen.models.base import SampleChunk, register
from molgen.models.options import SampleOptions
from molgen.models.pointcloud import PointCloudConfig, PointCloudGenerator
from molgen.nn.backbone import EquivariantBackbone
from molgen.nn.conditioning import ConditionEncoder
from molgen.nn.graph import remove_mean, scatter_sum
from molgen.sampling.guidance import guidance_experts, stack_experts
from molgen.sampling.langevin import annealed_langevin, geometric_sigmas, level_of_step



@dataclass
class EBMConfig(PointCloudConfig):
    """Family options of ``ebm`` (YAML section ``family:``).

    Args:
        sigma_min, sigma_max: the noise range (Å for positions; the same sigma for features).
        base_scale: ``c`` of the analytic Gaussian energy term (about QM9's per-coordinate RMS, 1.4 Å).
        steps_per_level: Langevin steps per noise level (levels = sampling steps / this).
        step_size: ``eps``; the step at level sigma is ``eps * sigma^2 / sigma_min^2``.
        mala: Metropolis-adjust each Langevin step (exactly stationary, about 2x the evaluations).
        denoise: a final Tweedie denoising step at ``sigma_min``.
        composition: ``joint`` (one energy given all targets) or ``product`` (sum of single-property
            energies, see the module docstring).
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0
    base_scale: float = 1.4
    steps_per_level: int = 10
    step_size: float = 1.0e-5
    mala: bool = False
    denoise: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise MolgenError("family.sigma_min and family.sigma_max must satisfy 0 < sigma_min < sigma_max")
        if self.base_scale <= 0 or self.step_size <= 0:
            raise MolgenError("family.base_scale and family.step_size must be positive")
        if self.steps_per_level < 1:
            raise MolgenError("family.steps_per_level must be at least 1")
        super().__post_init__()


@dataclass(frozen=True)
class EBMSampleOptions(SampleOptions):
    """The EBM's sampler options (defaults: the ``family:`` keys of the same names)."""

    mala: bool = False
    step_size: float = 1.0e-5
    steps_per_level: int = 10
    denoise: bool = True

    def validate(self) -> None:
        super().validate()
        if self.step_size <= 0 or self.steps_per_level < 1:
            raise MolgenError("sample options step_size must be positive and steps_per_level at least 1")


class EnergyNetwork(nn.Module):
    """Condition encoder + shared backbone + an invariant per-atom energy head, summed per molecule.

    Args:
        feat_dim: K, width of the per-atom features ``h``.
        num_properties: P.
        bcfg: backbone configuration.

    Shapes: x ``[N, 3]``, h ``[N, K]``, t ``[B]`` in [0, 1], y / y_mask ``[B, P]`` -> energy ``[B]``
    (E(3) invariant; float32 even under autocast).
    """

    def __init__(self, feat_dim: int, num_properties: int, bcfg: BackboneConfig) -> None:
        super().__init__()
        self.cond = ConditionEncoder(num_properties, bcfg.cond_dim, use_time=True)
        self.backbone = EquivariantBackbone(feat_dim, bcfg)
        F = bcfg.scalar_dim
        self.head = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, 1))

    def forward(self, x: Tensor, h: Tensor, t: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor,
                y_mask: Tensor) -> Tensor:
        c = self.cond(num_graphs, t, y, y_mask)  # [B, cond_dim]
        out = self.backbone(h, x, batch_index, c, num_graphs=num_graphs)
        e_atom = self.head(out.scalars)[:, 0]  # [N]
        if e_atom.dtype in (torch.float16, torch.bfloat16):  # autocast: sum and differentiate in fp32
            e_atom = e_atom.float()
        return scatter_sum(e_atom, batch_index, num_graphs)  # [B]


@register("ebm")
class EnergyBasedModel(PointCloudGenerator):
    supports_compile = False  # the loss differentiates through the network's gradient (double backward)
    config_cls = EBMConfig
    options_cls = EBMSampleOptions

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__(cfg, stats)
        self.net = EnergyNetwork(self.feat_dim, len(stats.properties), cfg.backbone)
        self.last_acceptance: float | None = None  # MALA acceptance rate of the last sampled chunk

    # ------------------------------------------------------------------ energy
    def noise_time(self, sigma: Tensor) -> Tensor:
        """The condition encoder's input: ``log(sigma / sigma_min) / log(sigma_max / sigma_min)``."""
        fc = self.fc
        return torch.log(sigma / fc.sigma_min) / math.log(fc.sigma_max / fc.sigma_min)

    def energy(self, x: Tensor, h: Tensor, sigma: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor,
               y_mask: Tensor) -> Tensor:
        """``E(x, h, sigma | y)`` per molecule ``[B]`` (``sigma`` ``[B]``), see the module docstring."""
        xc = remove_mean(x, batch_index, num_graphs)
        sq = scatter_sum((xc**2).sum(-1) + (h**2).sum(-1), batch_index, num_graphs)
        sig = sigma.to(sq.dtype)
        base = sq / (2.0 * (sig**2 + self.fc.base_scale**2))
        e_net = self.net(x, h, self.noise_time(sigma), batch_index, num_graphs, y, y_mask)
        return base + e_net.to(sq.dtype) / sig

    def composed_energy(self, x: Tensor, h: Tensor, sigma: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor,
                        y_mask: Tensor, guidance: float = 0.0, composition: str = "joint") -> Tensor:
        """Guided / composed energy per molecule: ``sum_k c_k E(x | condition_k)`` in one batched call.

        ``joint``: ``(1 + w) E(x | y) - w E(x | ∅)``. ``product``:
        ``(1 + w) sum_p E(x | y_p) - (P - 1 + w P) E(x | ∅)`` over the properties given per molecule
        (:func:`molgen.sampling.guidance.guidance_experts`).
        """
        experts = guidance_experts(y, y_mask, guidance, composition)
        K = len(experts)
        index_k, y_k, mask_k, coef = stack_experts(experts, batch_index, num_graphs)
        e = self.energy(x.repeat(K, 1), h.repeat(K, 1), sigma.repeat(K), index_k, K * num_graphs, y_k,
                        mask_k).view(K, num_graphs)
        return (coef.to(e.dtype) * e).sum(0)

    def energy_and_grad(self, x: Tensor, h: Tensor, sigma: Tensor, batch_index: Tensor, num_graphs: int, y: Tensor,
                        y_mask: Tensor, guidance: float = 0.0, composition: str = "joint"
                        ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Composed energy ``[B]`` and its gradient w.r.t. ``(x, h)`` (detached; works under no_grad)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            h = h.detach().requires_grad_(True)
            e = self.composed_energy(x, h, sigma, batch_index, num_graphs, y, y_mask, guidance, composition)
            gx, gh = torch.autograd.grad(e.sum(), (x, h))
        return e.detach(), (remove_mean(gx, batch_index, num_graphs), gh)

    # ------------------------------------------------------------------ protocol
    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Denoising score matching of ``-grad E`` with weight sigma^2, sigma log-uniform, per degree of freedom."""
        fc = self.fc
        B, batch_index = batch.num_graphs, batch.batch
        x, h = self.positions(batch), self.features(batch)
        sigma = fc.sigma_min * (fc.sigma_max / fc.sigma_min) ** torch.rand(B, device=x.device, dtype=x.dtype)
        s = sigma[batch_index][:, None]
        eps_x = remove_mean(torch.randn_like(x), batch_index, B)
        eps_h = torch.randn_like(h)
        y, y_mask = self.labels(batch, train=True)
        create_graph = torch.is_grad_enabled()  # validation runs under no_grad: no second-order graph
        with torch.enable_grad():
            zx = (x + s * eps_x).detach().requires_grad_(True)
            zh = (h + s * eps_h).detach().requires_grad_(True)
            e = self.energy(zx, zh, sigma, batch_index, B, y, y_mask)
            gx, gh = torch.autograd.grad(e.sum(), (zx, zh), create_graph=create_graph)
        # sigma * score + eps, with score = -grad E; the optimum is score = -eps / sigma in expectation
        err_x = scatter_sum(((eps_x - s * gx.to(x.dtype)) ** 2).sum(-1), batch_index, B)
        err_h = scatter_sum(((eps_h - s * gh.to(h.dtype)) ** 2).sum(-1), batch_index, B)
        n_atoms = torch.bincount(batch_index, minlength=B).to(err_x.dtype)
        per_mol = (err_x + err_h) / (n_atoms * (3 + self.feat_dim))
        return {
            "loss": per_mol.mean(),
            "loss_x": (err_x / (n_atoms * 3)).mean().detach(),
            "loss_h": (err_h / (n_atoms * self.feat_dim)).mean().detach(),
        }

    def log_likelihood(self, batch: Any) -> None:
        """``None``: the normalizer of ``exp(-E)`` is intractable (the suite's KDE is the proxy)."""
        return None

    # ------------------------------------------------------------------ sampling
    def sampling_schedule(self, steps: int, steps_per_level: int, step_size: float) -> tuple[list[float], list[float]]:
        """Noise level and Langevin step size of each of ``steps`` steps."""
        fc = self.fc
        levels = 1 if steps < 2 else min(steps, max(2, round(steps / steps_per_level)))
        ladder = geometric_sigmas(fc.sigma_max, fc.sigma_min, levels)
        sigmas = [ladder[i] for i in level_of_step(steps, levels)]
        return sigmas, [step_size * s**2 / fc.sigma_min**2 for s in sigmas]

    def sample_state(self, chunk: SampleChunk, opts: EBMSampleOptions, gen: torch.Generator,
                     progress: bool) -> tuple[Tensor, Tensor]:
        """Annealed Langevin dynamics from ``sigma_max * N(0, I)`` (zero-CoM positions) to ``sigma_min``."""
        counts, y, y_mask, steps, guidance = chunk.counts, chunk.y, chunk.y_mask, opts.steps, opts.guidance
        fc = self.fc
        B = counts.numel()
        batch_index, zx, zh = self.prior(counts, gen)
        N = zx.shape[0]
        state = (zx * fc.sigma_max, zh * fc.sigma_max)
        sigmas, step_sizes = self.sampling_schedule(steps, opts.steps_per_level, opts.step_size)

        def energy_grad(st: tuple[Tensor, ...], sigma: float) -> tuple[Tensor, tuple[Tensor, ...]]:
            sig = torch.full((B,), sigma, device=st[0].device, dtype=st[0].dtype)
            return self.energy_and_grad(st[0], st[1], sig, batch_index, B, y, y_mask, guidance, opts.composition)

        result = annealed_langevin(
            energy_grad, state, sigmas, step_sizes, batch_index, B,
            noise=lambda: (self.randn((N, 3), gen), self.randn((N, self.feat_dim), gen)),
            uniform=lambda: torch.rand(B, generator=gen),
            project=lambda st: (remove_mean(st[0], batch_index, B),) + tuple(st[1:]),
            mala=opts.mala,
            iterator=self.steps_iter(steps, progress, desc="Langevin"),
        )
        self.last_acceptance = result.acceptance
        x, h = result.state
        if opts.denoise:  # Tweedie: E[z_0 | z] = z + sigma^2 score(z)
            s2 = fc.sigma_min**2
            _, (gx, gh) = energy_grad((x, h), fc.sigma_min)
            x, h = x - s2 * gx, h - s2 * gh
        return remove_mean(x, batch_index, B), h
