"""Annealed Langevin dynamics over noise levels, optionally Metropolis-adjusted (MALA).

Independent of any network: a sampler sees an ``energy_grad(state, sigma) -> (E [B], grads)``
callable, where a state is a tuple of per-atom tensors (for a batch of molecules ``(x [N, 3], h [N, K])``)
and ``E`` is one energy per molecule, ``p_sigma(state) ∝ exp(-E)``.

Annealed Langevin dynamics (Song & Ermon, "Generative Modeling by Estimating Gradients of the Data
Distribution", NeurIPS 2019, Alg. 1): for noise levels ``sigma_1 > ... > sigma_L = sigma_min`` run
a few steps of the unadjusted Langevin algorithm at each level with step size
``alpha_i = eps * sigma_i^2 / sigma_min^2``::

    z' = z - alpha/2 * grad E(z) + sqrt(alpha) * xi,    xi ~ N(0, I)

MALA (Roberts & Tweedie 1996) treats ``z'`` as a proposal with density
``q(z'|z) = N(z'; z - alpha/2 grad E(z), alpha I)`` and accepts it with probability
``min(1, exp(-E(z') + E(z)) q(z|z') / q(z'|z))``, which makes ``exp(-E)`` exactly stationary at any
step size. Molecules are independent, so the test runs per molecule (every atom of a molecule is
accepted or rejected together). ``project`` keeps the state on a linear subspace (zero centre of mass
for positions); noise and gradients are projected too, so the proposal is a Gaussian on the subspace
and the same ratio holds there.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from molgen.nn.graph import scatter_sum

State = tuple[Tensor, ...]
#: ``(state, sigma) -> (energy [B], gradient of the summed energy w.r.t. each state part)``
EnergyGrad = Callable[[State, float], tuple[Tensor, State]]


def geometric_sigmas(sigma_max: float, sigma_min: float, levels: int) -> list[float]:
    """``levels`` noise levels from ``sigma_max`` down to ``sigma_min``, equally spaced in log."""
    if levels <= 1:
        return [sigma_min]
    ratio = math.log(sigma_min / sigma_max) / (levels - 1)
    return [sigma_max * math.exp(i * ratio) for i in range(levels)]


def level_of_step(steps: int, levels: int) -> list[int]:
    """Noise-level index of each of ``steps`` steps: ``levels`` contiguous, near-equal runs, in order."""
    return [k * levels // steps for k in range(steps)]


def langevin_proposal(state: State, grads: State, step: float, noise: State) -> State:
    """``z - step/2 * grad E(z) + sqrt(step) * xi`` for every part of the state."""
    return tuple(z - 0.5 * step * g + math.sqrt(step) * xi for z, g, xi in zip(state, grads, noise))


def log_proposal(to: State, frm: State, grads_frm: State, step: float, batch_index: Tensor, num_graphs: int) -> Tensor:
    """``log q(to | frm)`` per molecule ``[B]``, up to a constant that cancels in the MH ratio."""
    out = torch.zeros(num_graphs, dtype=to[0].dtype, device=to[0].device)
    for a, b, g in zip(to, frm, grads_frm):
        r = a - b + 0.5 * step * g
        out = out + scatter_sum((r**2).sum(-1), batch_index, num_graphs)
    return -out / (2.0 * step)


def mala_log_accept(e_old: Tensor, e_new: Tensor, old: State, new: State, grads_old: State, grads_new: State,
                    step: float, batch_index: Tensor, num_graphs: int) -> Tensor:
    """Log acceptance probability ``min(0, -E(z') + E(z) + log q(z|z') - log q(z'|z))`` per molecule."""
    log_ratio = (e_old - e_new) + log_proposal(old, new, grads_new, step, batch_index, num_graphs) \
        - log_proposal(new, old, grads_old, step, batch_index, num_graphs)
    return log_ratio.clamp(max=0.0)


class LangevinResult(NamedTuple):
    """Final state and the mean MALA acceptance rate (``None`` without Metropolis adjustment)."""

    state: State
    acceptance: float | None


def annealed_langevin(
    energy_grad: EnergyGrad,
    state: State,
    sigmas: list[float],
    step_sizes: list[float],
    batch_index: Tensor,
    num_graphs: int,
    *,
    noise: Callable[[], State],
    uniform: Callable[[], Tensor],
    project: Callable[[State], State] = lambda s: s,
    mala: bool = False,
    iterator=None,
) -> LangevinResult:
    """Run one Langevin step per entry of ``sigmas`` / ``step_sizes`` (the annealing schedule, per step).

    Args:
        energy_grad: energy per molecule and its gradient at a noise level.
        state: the initial state (already on the subspace ``project`` maps onto).
        sigmas, step_sizes: noise level and step size of every step (same length).
        batch_index: ``[N]`` molecule index of every atom; ``num_graphs``: B.
        noise: draws a standard normal tuple shaped like the state (projected here).
        uniform: draws ``[B]`` uniforms on [0, 1) (MALA's accept test).
        project: projection onto the state's subspace (zero centre of mass for positions).
        mala: Metropolis-adjust every step.
        iterator: optional wrapper of ``range(len(sigmas))`` (a progress bar); its values are ignored.
    """
    steps = len(sigmas)
    cache: tuple[float, Tensor, State] | None = None  # (sigma, E, grads) at the current state
    accepted, proposed = 0.0, 0
    for k, _ in enumerate(iterator if iterator is not None else range(steps)):
        sigma, step = sigmas[k], step_sizes[k]
        if cache is None or cache[0] != sigma:
            e, g = energy_grad(state, sigma)
            cache = (sigma, e, project(g))
        _, e, g = cache
        proposal = project(langevin_proposal(state, g, step, project(noise())))
        if not mala:
            state, cache = proposal, None
            continue
        e_new, g_new = energy_grad(proposal, sigma)
        g_new = project(g_new)
        log_a = mala_log_accept(e, e_new, state, proposal, g, g_new, step, batch_index, num_graphs)
        u = uniform().to(log_a.device)
        ok = torch.log(u) < log_a  # [B]
        node_ok = ok[batch_index][:, None]
        state = tuple(torch.where(node_ok, p, z) for p, z in zip(proposal, state))
        g = tuple(torch.where(node_ok, a, b) for a, b in zip(g_new, g))
        cache = (sigma, torch.where(ok, e_new, e), g)
        accepted += float(ok.float().sum())
        proposed += num_graphs
    return LangevinResult(state, accepted / proposed if mala and proposed else None)
