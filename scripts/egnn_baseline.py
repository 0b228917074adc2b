"""The EDM-architecture baseline of the benchmarks: the E(n)-equivariant GNN (EGNN) with EDM's diffusion.

Satorras, Hoogeboom & Welling, "E(n) Equivariant Graph Neural Networks", ICML 2021, configured as
Hoogeboom et al., "Equivariant Diffusion for Molecule Generation in 3D" (EDM), ICML 2022, use it on
QM9: 9 layers of 256 features by default, fully connected, edge MLP with attention, coordinate
update ``x_i += sum_j (x_i - x_j) / (|x_i - x_j| + 1) * tanh(phi_x(m_ij)) * 15``, sum aggregation,
the last layer of ``phi_x`` initialized as EDM does (xavier, gain 0.001),
trained with EDM's noise-prediction loss on zero-CoM positions and 0.25-scaled one-hot atom types
(no charges), sampled by ancestral steps of EDM's polynomial-2 VP process. Written here from the
papers (used by ``scripts/bench_gpu.py`` and ``scripts/bench_learning.py``; not part of molgen).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from molgen.nn.graph import full_edge_index, remove_mean, scatter_sum

NUM_TYPES = 5  # H C N O F


class EGCL(nn.Module):
    """One EGNN layer as EDM configures it on QM9 (one invariant sublayer + the coordinate update)."""

    def __init__(self, hidden: int, coords_range: float = 15.0) -> None:
        super().__init__()
        e_in = 2 * hidden + 2  # h_i, h_j, |x_i - x_j|², distance² of the input coordinates
        self.edge_mlp = nn.Sequential(nn.Linear(e_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.att = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.coord_mlp = nn.Sequential(nn.Linear(e_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                       nn.Linear(hidden, 1, bias=False))
        # EDM's initialization of the coordinate head (xavier, gain 0.001): the coordinate updates of
        # a fully connected molecule start near zero instead of summing 9 layers x N neighbours x 15 Å
        nn.init.xavier_uniform_(self.coord_mlp[-1].weight, gain=0.001)
        self.coords_range = coords_range

    def forward(self, h: Tensor, x: Tensor, edge_index: Tensor, d0: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        diff = x[dst] - x[src]
        radial = (diff * diff).sum(-1, keepdim=True)
        e_in = torch.cat([h[dst], h[src], radial, d0], dim=-1)
        m = self.edge_mlp(e_in)
        m = m * self.att(m)
        h = h + self.node_mlp(torch.cat([h, scatter_sum(m, dst, h.shape[0])], dim=-1))
        e_in = torch.cat([h[dst], h[src], radial, d0], dim=-1)
        trans = diff / (radial.sqrt() + 1.0) * torch.tanh(self.coord_mlp(e_in)) * self.coords_range
        return h, x + scatter_sum(trans, dst, x.shape[0])


class EGNN(nn.Module):
    """EDM-size EGNN dynamics: ``(x_t, h_t, t) -> (eps_x, eps_h)``, translation-free ``eps_x``."""

    def __init__(self, in_dim: int, hidden: int = 256, layers: int = 9) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim + 1, hidden)
        self.layers = nn.ModuleList([EGCL(hidden) for _ in range(layers)])
        self.out = nn.Linear(hidden, in_dim)

    def forward(self, x: Tensor, h: Tensor, t: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        edge_index = full_edge_index(batch, num_graphs)
        src, dst = edge_index
        d0 = ((x[dst] - x[src]) ** 2).sum(-1, keepdim=True)
        hh = self.embed(torch.cat([h, t[batch, None]], dim=-1))
        y = x
        for layer in self.layers:
            hh, y = layer(hh, y, edge_index, d0)
        return remove_mean(y - x, batch, num_graphs), self.out(hh)


def _alpha_sigma(t: Tensor) -> tuple[Tensor, Tensor]:
    """EDM's polynomial-2 VP schedule (without its precision clipping): alpha² = (1 - t²)²."""
    alpha2 = (1.0 - t * t) ** 2
    alpha2 = alpha2.clamp(1e-5, 1.0 - 1e-5)
    return alpha2.sqrt(), (1.0 - alpha2).sqrt()


def egnn_loss(net: EGNN, batch) -> Tensor:
    """EDM's training objective: noise prediction on CoM-free positions and 0.25-scaled one-hot types,
    the squared error averaged per degree of freedom of each molecule (EDM's ``l2`` loss), then over
    molecules."""
    B = batch.num_graphs
    x = remove_mean(batch.pos, batch.batch, B)
    h = nn.functional.one_hot(batch.atom_types, NUM_TYPES).to(x.dtype) * 0.25
    t = torch.rand(B, device=x.device)
    alpha, sigma = _alpha_sigma(t)
    eps_x = remove_mean(torch.randn_like(x), batch.batch, B)
    eps_h = torch.randn_like(h)
    a, s = alpha[batch.batch, None], sigma[batch.batch, None]
    px, ph = net(a * x + s * eps_x, a * h + s * eps_h, t, batch.batch, B)
    err = scatter_sum(((px - eps_x) ** 2).sum(-1) + ((ph - eps_h) ** 2).sum(-1), batch.batch, B)
    n_atoms = torch.bincount(batch.batch, minlength=B).to(err.dtype)
    return (err / (n_atoms * (3 + NUM_TYPES))).mean()


@torch.no_grad()
def egnn_sample(net: EGNN, counts: Tensor, steps: int, device: torch.device, autocast,
                gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Ancestral sampling of the VP process: ``steps`` network evaluations for one chunk; returns
    positions ``[N, 3]`` and atom-type indices ``[N]`` (argmax of the features, as EDM decodes)."""
    B = len(counts)
    batch = torch.repeat_interleave(torch.arange(B, device=device), counts.to(device))
    x = remove_mean(torch.randn(len(batch), 3, generator=gen).to(device), batch, B)
    h = torch.randn(len(batch), NUM_TYPES, generator=gen).to(device)
    for k in range(steps, 0, -1):
        t, s_ = torch.full((B,), k / steps, device=device), torch.full((B,), (k - 1) / steps, device=device)
        (a_t, sig_t), (a_s, sig_s) = _alpha_sigma(t), _alpha_sigma(s_)
        with autocast():
            ex, eh = net(x, h, t, batch, B)
        a_ts = (a_t / a_s)[batch, None]
        sig2_ts = (sig_t**2 - (a_t / a_s) ** 2 * sig_s**2)[batch, None]
        st, ss = sig_t[batch, None], sig_s[batch, None]
        x = (x - sig2_ts / (a_ts * st) * ex.float()) / a_ts
        h = (h - sig2_ts / (a_ts * st) * eh.float()) / a_ts
        noise = (sig2_ts * ss**2 / st**2).sqrt()
        x = x + noise * remove_mean(torch.randn(x.shape, generator=gen).to(device), batch, B)
        h = h + noise * torch.randn(h.shape, generator=gen).to(device)
    return x.float(), h.argmax(-1)


