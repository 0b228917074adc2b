"""Fixed-step ODE solvers and change-of-variables log-likelihoods for the point-cloud families.

Shared by ``flow`` (a continuous normalizing flow), ``flow-matching`` and ``score`` (its
probability-flow ODE). A state is a tuple of tensors; a field maps ``(t, state)`` to the tuple of
time derivatives. For a batch of molecules the state is ``(x [N, 3], h [N, K])``.

Log-likelihood (Chen et al. 2018, Grathwohl et al. 2019): along ``dz/dt = v(z, t)``,
``d log p_t(z_t) / dt = -div v``, so for data at ``t_data`` and the prior at ``t_prior``::

    log p(z_data) = log p_prior(z_prior) + integral_{t_data}^{t_prior} div v(z_t, t) dt

The divergence is per molecule. Positions live in the zero centre-of-mass subspace: when the field
is translation invariant in its input and its position output is mean-free (as
:class:`molgen.nn.dynamics.DynamicsNetwork` is), the trace of its Jacobian in full coordinates equals
the divergence on the subspace, and the prior there is a standard normal of ``(n - 1) * 3``
dimensions (EDM's convention).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from molgen.errors import MolgenError
from molgen.nn.graph import scatter_sum

State = tuple[Tensor, ...]
Field = Callable[[float, State], State]
METHODS = ("euler", "heun", "rk4")


def _axpy(a: State, b: State, h: float) -> State:
    return tuple(x + h * y for x, y in zip(a, b))


def ode_step(f: Field, t: float, z: State, dt: float, method: str = "heun") -> State:
    """One step of size ``dt`` (may be negative) from ``(t, z)``."""
    if method == "euler":
        return _axpy(z, f(t, z), dt)
    if method == "heun":
        k1 = f(t, z)
        k2 = f(t + dt, _axpy(z, k1, dt))
        return tuple(x + 0.5 * dt * (a + b) for x, a, b in zip(z, k1, k2))
    if method == "rk4":
        k1 = f(t, z)
        k2 = f(t + dt / 2, _axpy(z, k1, dt / 2))
        k3 = f(t + dt / 2, _axpy(z, k2, dt / 2))
        k4 = f(t + dt, _axpy(z, k3, dt))
        return tuple(x + dt / 6 * (a + 2 * b + 2 * c + d) for x, a, b, c, d in zip(z, k1, k2, k3, k4))
    raise MolgenError(f"unknown ODE solver '{method}' (choose from: {', '.join(METHODS)})")


def odeint(f: Field, z: State, t0: float, t1: float, steps: int, method: str = "heun",
           progress: bool = False) -> State:
    """Integrate from ``t0`` to ``t1`` with ``steps`` equal steps; returns the final state."""
    if steps < 1:
        raise MolgenError("--steps must be at least 1")
    dt = (t1 - t0) / steps
    iterator = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=steps, desc="ODE", leave=False)
    for i in iterator:
        z = ode_step(f, t0 + i * dt, z, dt, method)
    return z


def divergence(f_out: State, z: State, batch_index: Tensor, num_graphs: int, *, exact: bool,
               noise: State | None = None, create_graph: bool = False) -> Tensor:
    """Per-molecule divergence ``[B]`` of ``f_out = f(z)`` with respect to ``z`` (both tuples of ``[N, d]``).

    ``exact=True``: the Jacobian trace by one vector-Jacobian product per (atom slot, coordinate);
    molecules are independent, so one product serves the k-th atom of every molecule at once
    (``max_atoms x sum(d)`` products: fine for QM9-size molecules, exact to round-off).
    ``exact=False``: Hutchinson's estimator ``eps^T J eps`` with the given ``noise`` (Rademacher
    or Gaussian, same shapes as ``z``), unbiased.
    """
    if not exact:
        if noise is None:
            raise ValueError("Hutchinson's estimator needs noise")
        grads = torch.autograd.grad(f_out, z, grad_outputs=noise, create_graph=create_graph)
        per_node = sum((g * e).sum(-1) for g, e in zip(grads, noise))
        return scatter_sum(per_node, batch_index, num_graphs)
    counts = torch.bincount(batch_index, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch_index.numel(), device=batch_index.device) - starts[batch_index]  # atom index within its molecule
    total = torch.zeros(num_graphs, dtype=z[0].dtype, device=z[0].device)
    for k in range(int(counts.max())):
        rows = slot == k
        for part, width in enumerate(t.shape[1] for t in z):
            for d in range(width):
                grad_out = [torch.zeros_like(o) for o in f_out]
                grad_out[part][rows, d] = 1.0
                g = torch.autograd.grad(f_out, z, grad_outputs=grad_out, retain_graph=True,
                                        create_graph=create_graph)[part]
                total = total + scatter_sum(torch.where(rows, g[:, d], torch.zeros_like(g[:, d])), batch_index, num_graphs)
    return total


def standard_normal_log_prob(z: State, batch_index: Tensor, num_graphs: int, dims: Sequence[Tensor]) -> Tensor:
    """``log N(z; 0, I)`` per molecule, with ``dims[i]`` ``[B]`` degrees of freedom for part ``i``."""
    out = torch.zeros(num_graphs, dtype=z[0].dtype, device=z[0].device)
    for part, d in zip(z, dims):
        sq = scatter_sum((part ** 2).sum(-1), batch_index, num_graphs)
        out = out - 0.5 * sq - 0.5 * d.to(out.dtype) * math.log(2 * math.pi)
    return out


def log_likelihood(field: Callable[[float, State], State], z_data: State, batch_index: Tensor, num_graphs: int,
                   dims: Sequence[Tensor], *, t_data: float, t_prior: float, steps: int,
                   method: str = "heun", exact: bool = True, seed: int | None = 0,
                   differentiable: bool = False, noise: State | None = None) -> Tensor:
    """``log p(z_data)`` per molecule in nats by the instantaneous change of variables.

    Args:
        field: ``(t, state) -> d state / dt``, built from differentiable torch ops.
        z_data: the data state, e.g. ``(x [N, 3] zero-CoM, h [N, K])``.
        dims: degrees of freedom per molecule of each part under the standard normal prior at
            ``t_prior`` (``(n - 1) * 3`` for zero-CoM positions, ``n * K`` for features).
        t_data, t_prior: the ODE times of the data and of the prior.
        steps, method: the fixed-step solver (``dt`` is signed).
        exact: exact Jacobian trace, else Hutchinson with Rademacher noise (fixed per solve, as FFJORD).
        differentiable: keep the autograd graph through the solver and the divergence (maximum-
            likelihood training of a CNF, see :func:`cnf_log_likelihood`); the default detaches
            every step (inference only, less memory).
        noise: an explicit Hutchinson probe (same shapes as ``z_data``), only with
            ``differentiable=True``; default: Rademacher drawn from ``seed``.
    """
    if differentiable:
        return cnf_log_likelihood(field, z_data, batch_index, num_graphs, dims, t_data=t_data, t_prior=t_prior,
                                  steps=steps, method=method, exact=exact, noise=noise, seed=seed).log_prob
    if noise is not None:
        raise ValueError("an explicit Hutchinson probe needs differentiable=True")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    noise = None
    if not exact:
        noise = tuple((torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t) for t in z_data)
        # keep the position probe in the zero-CoM subspace, where the flow lives
        from molgen.nn.graph import remove_mean

        noise = (remove_mean(noise[0], batch_index, num_graphs),) + noise[1:]

    def augmented(t: float, state: State) -> State:
        z = tuple(s.detach().requires_grad_(True) for s in state[:-1])
        with torch.enable_grad():
            out = field(t, z)
            div = divergence(out, z, batch_index, num_graphs, exact=exact, noise=noise)
        return tuple(o.detach() for o in out) + (div.detach(),)

    state = tuple(z_data) + (torch.zeros(num_graphs, dtype=z_data[0].dtype, device=z_data[0].device),)
    final = odeint(augmented, state, t_data, t_prior, steps, method)
    z_prior, integral = final[:-1], final[-1]
    return standard_normal_log_prob(z_prior, batch_index, num_graphs, dims) + integral


class CNFTerms(NamedTuple):
    """Per-molecule ``[B]`` results of :func:`cnf_log_likelihood`."""

    log_prob: Tensor  #: log p(z_data), nats
    kinetic: Tensor  #: integral of ||v||^2 dt over the solve (RNODE's kinetic energy)
    jacobian: Tensor  #: integral of ||eps^T J||^2 dt, Hutchinson estimate of ||J||_F^2 (0 if exact)


def cnf_log_likelihood(field: Callable[[float, State], State], z_data: State, batch_index: Tensor, num_graphs: int,
                       dims: Sequence[Tensor], *, t_data: float, t_prior: float, steps: int,
                       method: str = "heun", exact: bool = False, noise: State | None = None,
                       seed: int | None = 0) -> CNFTerms:
    """Differentiable change of variables (training a CNF by maximum likelihood) + RNODE's regularizers.

    Same integral as :func:`log_likelihood`, but the graph is kept: the divergence is taken with
    ``create_graph=True`` and nothing is detached, so gradients flow to the field's parameters and
    to ``z_data`` through every solver step ("discretize-then-optimize"). Under ``torch.no_grad``
    it computes the same values without a graph. Also integrates, along the same trajectory,
    the kinetic energy ``||v||^2`` and the Jacobian Frobenius norm estimate ``||eps^T J||^2`` of
    Finlay et al., "How to train your neural ODE" (ICML 2020), as positive time integrals.

    Args:
        field, z_data, batch_index, num_graphs, dims, t_data, t_prior, steps, method: as :func:`log_likelihood`.
        exact: exact Jacobian trace (``max_atoms x sum(d)`` double-backward products per evaluation);
            default Hutchinson.
        noise: the Hutchinson probe, fixed for the whole solve (FFJORD), same shapes as ``z_data``;
            e.g. Gaussian with the position part projected to zero CoM. Default: Rademacher from
            ``seed``, position part projected to zero CoM.
    """
    from molgen.nn.graph import remove_mean

    keep_graph = torch.is_grad_enabled()
    n_parts = len(z_data)
    if not exact and noise is None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = tuple((torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t) for t in z_data)
        noise = (remove_mean(noise[0], batch_index, num_graphs),) + noise[1:]
    sign = 1.0 if t_prior >= t_data else -1.0  # the regularizers integrate |dt|

    def augmented(t: float, state: State) -> State:
        with torch.enable_grad():
            z = tuple(s if s.requires_grad else s.detach().requires_grad_(True) for s in state[:n_parts])
            out = field(t, z)
            if exact:
                div = divergence(out, z, batch_index, num_graphs, exact=True, create_graph=keep_graph)
                frob = torch.zeros_like(div)
            else:
                grads = torch.autograd.grad(out, z, grad_outputs=noise, create_graph=keep_graph)
                div = scatter_sum(sum((g * e).sum(-1) for g, e in zip(grads, noise)), batch_index, num_graphs)
                frob = scatter_sum(sum((g ** 2).sum(-1) for g in grads), batch_index, num_graphs)
            kinetic = scatter_sum(sum((o ** 2).sum(-1) for o in out), batch_index, num_graphs)
        res = tuple(out) + (div, sign * kinetic, sign * frob)
        return res if keep_graph else tuple(r.detach() for r in res)

    zeros = torch.zeros(num_graphs, dtype=z_data[0].dtype, device=z_data[0].device)
    final = odeint(augmented, tuple(z_data) + (zeros, zeros, zeros), t_data, t_prior, steps, method)
    z_prior = final[:n_parts]
    integral, kinetic, frob = final[n_parts:]
    log_prob = standard_normal_log_prob(z_prior, batch_index, num_graphs, dims) + integral
    return CNFTerms(log_prob, kinetic, frob)
