"""The one E(3)-equivariant GNN backbone of molgen.

Node states carry ``F`` scalars (``0e``) and ``V`` vectors (``1o``). Each layer is a tensor-field
convolution (Thomas et al. 2018; NequIP, Batzner et al. 2022) restricted to l <= 1: a message
``TP(x_j, Y(r_ij); w(s_i, s_j, |r_ij|, e_ij))`` with per-edge weights from an invariant MLP, summed
over neighbours with torch-geometric's ``scatter``, mixed by an equivariant linear layer, passed
through a gated nonlinearity (Weiler et al. 2018) and added to a residual. The graph-level
condition vector (time / noise level + masked properties) modulates every layer by FiLM on the
scalars and an invariant per-channel scale on the vectors, which keeps the layer equivariant.

Everything depends on positions only through relative vectors, so outputs are translation
invariant; scalars/edges/graph embedding are E(3) invariant and vectors are E(3) equivariant
(reflections included, since vectors are ``1o``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import Tensor, nn
from torch_geometric.utils import scatter

from molgen.config import BackboneConfig
from molgen.nn.graph import full_edge_index, radius_edge_index, scatter_mean


@dataclass
class BackboneOutput:
    """What the backbone returns.

    Attributes:
        scalars: ``[N, F]`` invariant node features.
        vectors: ``[N, V, 3]`` equivariant node vectors (Cartesian x, y, z).
        edge_index: ``[2, E]`` edges used (source j, target i).
        edge_features: ``[E, edge_dim]`` invariant, symmetric edge features, or ``None`` unless
            requested with ``edge_features=True`` (a per-edge MLP: the priciest output, which no
            point-cloud family and not the oracle needs).
        graph: ``[B, graph_dim]`` invariant graph embedding (mean-pooled).
    """

    scalars: Tensor
    vectors: Tensor
    edge_index: Tensor
    edge_features: Tensor | None
    graph: Tensor


class GaussianRBF(nn.Module):
    """Gaussian radial basis on [0, ``r_max``] Å with ``num`` centres."""

    def __init__(self, num: int, r_max: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, r_max, num))
        self.gamma = (num / r_max) ** 2 / 2.0

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (d[:, None] - self.centers[None, :]) ** 2)


def fp32(module: nn.Module, x: Tensor) -> Tensor:
    """Run an e3nn module in float32 even under autocast (its tensordot kernels need matching dtypes)."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return module(x.float())
    return module(x)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class EquivariantConv(nn.Module):
    """One tensor-field convolution (l <= 1) with gate, residual, normalization and FiLM conditioning.

    The message from j to i is the ``uvu`` tensor product of the node state with the spherical
    harmonics ``Y(r_ij) = (Y0, Y1)`` restricted to outputs ``0e``/``1o``, written out explicitly
    and aggregated path by path with torch-geometric's ``scatter`` (the generic e3nn kernel and a
    concatenated per-edge message are several times slower on CPU for these four small paths):
    ``0e x 0e -> 0e``, ``1o x 1o -> 0e``, ``0e x 1o -> 1o`` and ``1o x 0e -> 1o``, each weighted
    per edge and channel by an invariant MLP of ``(s_i, s_j, rbf(|r_ij|), e_ij)``.

    Args:
        scalar_dim: F, number of ``0e`` channels.
        vector_dim: V, number of ``1o`` channels.
        edge_in_dim: width of the invariant per-edge input (radial basis + edge attributes).
        cond_dim: width of the graph-level condition vector.

    Shapes:
        x: ``[N, F + 3V]`` in the irreps layout ``Fx0e + Vx1o``; sh: ``[E, 4]``; edge_in: ``[E, edge_in_dim]``;
        cond: ``[N, cond_dim]`` (already gathered per node) -> ``[N, F + 3V]``.
    """

    def __init__(self, scalar_dim: int, vector_dim: int, edge_in_dim: int, cond_dim: int) -> None:
        super().__init__()
        F, V = scalar_dim, vector_dim
        self.F, self.V = F, V
        self.irreps_node = o3.Irreps(f"{F}x0e + {V}x1o")
        # messages: (F + V) scalars and 2V vectors
        self.irreps_msg = o3.Irreps(f"{F + V}x0e + {2 * V}x1o")
        self.to_vec_src = nn.Linear(F, V, bias=False)  # scalars that seed 0e x 1o -> 1o
        self.edge_src = nn.Linear(F, F, bias=False)
        self.edge_dst = nn.Linear(F, F, bias=False)
        self.edge_rad = nn.Linear(edge_in_dim, F)
        self.edge_w = nn.Linear(F, F + 3 * V)
        self.gate = Gate(f"{F}x0e", [nn.functional.silu], f"{V}x0e", [torch.sigmoid], f"{V}x1o")
        self.mix = o3.Linear(self.irreps_msg, self.gate.irreps_in)
        self.self_mix = o3.Linear(self.irreps_node, self.irreps_node)
        self.norm = nn.LayerNorm(F)
        self.film = nn.Linear(cond_dim, 2 * F + V)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, edge_index: Tensor, sh: Tensor, edge_in: Tensor, cond: Tensor) -> Tensor:
        F, V = self.F, self.V
        N = x.shape[0]
        src, dst = edge_index
        # in-degree with a static shape (bincount's is data dependent: a graph break under torch.compile)
        ones = torch.ones(dst.shape[0], device=x.device)
        deg = torch.zeros(N, device=x.device).index_add_(0, dst, ones).clamp(min=1).to(x.dtype)
        s, v = x[:, :F], x[:, F:].reshape(-1, V, 3)
        # per-edge weights; the first layer of the edge MLP is applied per node, then gathered
        hidden = nn.functional.silu(self.edge_src(s)[src] + self.edge_dst(s)[dst] + self.edge_rad(edge_in))
        w_ss, w_vv, w_sv, w_vs = torch.split(self.edge_w(hidden), [F, V, V, V], dim=-1)
        # the four l <= 1 paths of the tensor product; with e3nn's "component" normalization
        # Y0 = 1 and Y1 = sqrt(3) r_hat, so Y0 factors drop and 1o x 1o -> 0e is (v . Y1) / sqrt(3)
        y1 = sh[:, 1:]
        v_j = v[src]
        m_ss = w_ss * s[src]  # 0e x 0e -> 0e
        m_vv = w_vv * (v_j * y1[:, None, :]).sum(-1) / 3**0.5  # 1o x 1o -> 0e
        m_sv = (w_sv * self.to_vec_src(s)[src])[:, :, None] * y1[:, None, :]  # 0e x 1o -> 1o
        m_vs = w_vs[:, :, None] * v_j  # 1o x 0e -> 1o
        # sum over neighbours (torch-geometric scatter), normalized by sqrt(degree)
        agg = [scatter(m, dst, dim=0, dim_size=N, reduce="sum") for m in (m_ss, m_vv, m_sv, m_vs)]
        vec = torch.cat([agg[2], agg[3]], dim=1).reshape(N, 6 * V)
        msg = torch.cat([agg[0], agg[1], vec], dim=-1) / deg.sqrt()[:, None]
        out = self.gate(fp32(self.mix, msg)) + fp32(self.self_mix, x)
        s, v = out[:, :F], out[:, F:].reshape(-1, V, 3)
        # normalization: LayerNorm on scalars, RMS over vector channels (rotation invariant)
        s = self.norm(s)
        v = v / (v.pow(2).sum(-1).mean(-1, keepdim=True) + 1e-6).sqrt()[:, :, None]
        gamma, beta, gamma_v = torch.split(self.film(cond), [F, F, V], dim=-1)
        s = s * (1 + gamma) + beta
        v = v * (1 + gamma_v)[:, :, None]
        return torch.cat([s, v.reshape(-1, 3 * V)], dim=-1)


class EquivariantBackbone(nn.Module):
    """The shared network: invariant/equivariant node, edge and graph features from a 3D molecule.

    Args:
        node_in_dim: width of the invariant input node features (e.g. one-hot atom types + time).
        cfg: :class:`molgen.config.BackboneConfig`.
        edge_attr_dim: width of optional invariant input edge attributes (e.g. noisy bond types).

    Shapes:
        h: ``[N, node_in_dim]``; pos: ``[N, 3]``; batch_index: ``[N]``; cond: ``[B, cond_dim]`` or None;
        edge_index: ``[2, E]`` or None (fully connected / radius graph); edge_attr: ``[E, edge_attr_dim]``.
    """

    def __init__(self, node_in_dim: int, cfg: BackboneConfig, edge_attr_dim: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        F, V = cfg.scalar_dim, cfg.vector_dim
        self.F, self.V = F, V
        self.edge_attr_dim = edge_attr_dim
        self.embed = nn.Linear(node_in_dim, F)
        self.rbf = GaussianRBF(cfg.num_rbf, cfg.rbf_max)
        edge_in_dim = cfg.num_rbf + edge_attr_dim
        self.layers = nn.ModuleList(
            [EquivariantConv(F, V, edge_in_dim, cfg.cond_dim) for _ in range(cfg.num_layers)]
        )
        self.edge_out = _mlp(2 * F + V + edge_in_dim, cfg.edge_dim, cfg.edge_dim)
        self.graph_out = _mlp(F, cfg.graph_dim, cfg.graph_dim)
        self.irreps_out = o3.Irreps(f"{F}x0e + {V}x1o")

    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        batch_index: Tensor,
        cond: Tensor | None = None,
        edge_index: Tensor | None = None,
        edge_attr: Tensor | None = None,
        num_graphs: int | None = None,
        edge_features: bool = False,
    ) -> BackboneOutput:
        num_graphs = int(batch_index.max()) + 1 if num_graphs is None else num_graphs
        if edge_index is None:
            edge_index = (
                full_edge_index(batch_index, num_graphs)
                if self.cfg.radius is None
                else radius_edge_index(pos, batch_index, self.cfg.radius)
            )
        src, dst = edge_index
        rel = pos[dst] - pos[src]  # [E, 3]
        dist = rel.norm(dim=-1)
        sh = o3.spherical_harmonics([0, 1], rel, normalize=True, normalization="component")
        edge_in = self.rbf(dist)
        if self.edge_attr_dim:
            if edge_attr is None:
                raise ValueError("this backbone expects edge_attr")
            edge_in = torch.cat([edge_in, edge_attr], dim=-1)
        cond_node = (
            cond[batch_index]
            if cond is not None
            else torch.zeros(h.shape[0], self.cfg.cond_dim, device=h.device, dtype=h.dtype)
        )
        x = torch.cat([self.embed(h), h.new_zeros(h.shape[0], 3 * self.V)], dim=-1)
        for layer in self.layers:
            x = layer(x, edge_index, sh, edge_in, cond_node)
        s, v = x[:, : self.F], x[:, self.F :].reshape(-1, self.V, 3)
        edges = None
        if edge_features:
            vv = (v[src] * v[dst]).sum(-1)  # [E, V] invariant, symmetric
            edges = self.edge_out(torch.cat([s[src] + s[dst], s[src] * s[dst], vv, edge_in], dim=-1))
        graph = self.graph_out(scatter_mean(s, batch_index, num_graphs))
        return BackboneOutput(scalars=s, vectors=v, edge_index=edge_index, edge_features=edges, graph=graph)


def compile_backbones(model: nn.Module) -> int:
    """``torch.compile`` (in place, dynamic shapes) every layer of every backbone inside ``model``.

    In place (``nn.Module.compile``), so parameter names and checkpoints are unchanged. Each layer is
    compiled on its own: molecules of every size reuse one graph, and the surrounding code (edge
    construction, family heads) stays eager. Returns the number of layers compiled.
    """
    import torch._dynamo.config as dynamo_config

    count = 0
    for module in model.modules():
        if isinstance(module, EquivariantBackbone):
            for layer in module.layers:
                layer.compile(dynamic=True)
                count += 1
    # e3nn's o3.Linear generates a class per instance, so every layer is its own compiled entry
    # (and again for train / no-grad): the default limit of 8 entries would silently fall back to eager
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 4 * count)
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 8 * count)
    return count
