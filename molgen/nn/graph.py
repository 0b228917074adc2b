"""Graph construction helpers shared by the backbone and the families."""

from __future__ import annotations

import torch
from torch import Tensor


def full_edge_index(batch_index: Tensor, num_graphs: int | None = None) -> Tensor:
    """All ordered pairs (j -> i), i != j, within each molecule of a batch.

    Args:
        batch_index: ``[N]`` graph index of each node, sorted (as in a PyG ``Batch``).

    Returns:
        ``[2, E]`` with row 0 the source j and row 1 the target i, E = sum_g n_g (n_g - 1).
    """
    device = batch_index.device
    counts = torch.bincount(batch_index, minlength=num_graphs or 0)
    starts = torch.cumsum(counts, 0) - counts
    per_node = counts[batch_index]  # neighbours (incl. self) of every node
    src = torch.repeat_interleave(torch.arange(batch_index.numel(), device=device), per_node)
    first = torch.repeat_interleave(starts[batch_index], per_node)
    offsets = torch.cumsum(per_node, 0) - per_node
    local = torch.arange(src.numel(), device=device) - torch.repeat_interleave(offsets, per_node)
    dst = first + local
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


def radius_edge_index(pos: Tensor, batch_index: Tensor, radius: float) -> Tensor:
    """Pairs within ``radius`` Å inside each molecule (dense per molecule; fine up to a few hundred atoms)."""
    edge_index = full_edge_index(batch_index)
    d = (pos[edge_index[1]] - pos[edge_index[0]]).norm(dim=-1)
    return edge_index[:, d < radius]


def remove_mean(x: Tensor, batch_index: Tensor, num_graphs: int | None = None) -> Tensor:
    """Subtract each molecule's centroid: projects ``[N, 3]`` onto the zero centre-of-mass subspace."""
    num_graphs = int(batch_index.max()) + 1 if num_graphs is None else num_graphs
    sums = torch.zeros(num_graphs, x.shape[-1], device=x.device, dtype=x.dtype).index_add_(0, batch_index, x)
    counts = torch.bincount(batch_index, minlength=num_graphs).clamp(min=1).to(x.dtype)
    return x - (sums / counts[:, None])[batch_index]


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` [M, ...] into ``dim_size`` buckets given by ``index`` [M]."""
    out = torch.zeros((dim_size,) + src.shape[1:], device=src.device, dtype=src.dtype)
    return out.index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    counts = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
    shape = (-1,) + (1,) * (src.dim() - 1)
    return scatter_sum(src, index, dim_size) / counts.view(shape)
