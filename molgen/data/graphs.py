"""From QM9 tensors to torch-geometric graphs, and the training-set statistics a model keeps.

A molecule graph is a ``torch_geometric.data.Data`` with ``pos [n, 3]`` (Å), ``atom_types [n]``,
``charges [n]``, ``y [1, P]`` (properties normalized with training statistics), ``y_mask [1, P]`` and
``smiles`` (the source SMILES string; a batch holds the list of them, for the 2D families).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch_geometric.data import Data

from molgen.data.properties import get_property
from molgen.data.qm9 import QM9Data, edm_splits
from molgen.errors import MolgenError


#: Property bins of the joint (atom count, property) histograms kept in :class:`DatasetStats`.
JOINT_BINS = 100


@dataclass
class DatasetStats:
    """What a model must remember about its training data (saved in every checkpoint).

    Attributes:
        n_atoms_hist: counts of molecules by atom count (index = atom count).
        properties: names of the conditioning properties, in column order.
        mean, std: per-property normalization in user units.
        low, high: per-property 0.5 % and 99.5 % quantiles (the central 99 % of the training data).
        joint_counts: per property, ``[max_atoms + 1, JOINT_BINS]`` counts of training molecules by
            atom count and property bin (EDM's ``DistributionProperty``), for drawing atom counts
            given a target.
        joint_edges: per property, the ``JOINT_BINS + 1`` bin edges (user units).
    """

    n_atoms_hist: list[int]
    properties: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    joint_counts: dict[str, list[list[int]]] = field(default_factory=dict)
    joint_edges: dict[str, list[float]] = field(default_factory=dict)

    @property
    def max_atoms(self) -> int:
        return len(self.n_atoms_hist) - 1

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """``[..., P]`` user units -> normalized."""
        mean = torch.tensor(self.mean, dtype=values.dtype, device=values.device)
        std = torch.tensor(self.std, dtype=values.dtype, device=values.device)
        return (values - mean) / std

    def denormalize(self, values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=values.dtype, device=values.device)
        std = torch.tensor(self.std, dtype=values.dtype, device=values.device)
        return values * std + mean

    def sample_n_atoms(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` atom counts from the training histogram."""
        probs = torch.tensor(self.n_atoms_hist, dtype=torch.float64)
        return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=generator)

    def n_atoms_probs_given(self, targets: dict[str, float]) -> torch.Tensor:
        """``p(N | targets)`` ``[max_atoms + 1]`` from the joint histograms.

        One property: the atom-count column of the target's bin. Several: the naive-Bayes product
        ``p(N) * prod_p p(N | y_p) / p(N)``. Falls back to ``p(N)`` where the bins are empty.
        """
        prior = torch.tensor(self.n_atoms_hist, dtype=torch.float64)
        prior = prior / prior.sum()
        probs = prior.clone()
        for name, value in targets.items():
            if name not in self.joint_counts:
                continue
            edges = torch.tensor(self.joint_edges[name], dtype=torch.float64)
            b = int(torch.clamp(torch.bucketize(torch.tensor(float(value), dtype=torch.float64), edges) - 1,
                                0, len(edges) - 2))
            column = torch.tensor(self.joint_counts[name], dtype=torch.float64)[:, b]
            if column.sum() > 0:
                probs = probs * (column / column.sum()) / prior.clamp(min=1e-12)
        return probs / probs.sum() if probs.sum() > 0 else prior

    def sample_n_atoms_given(self, n: int, targets: dict[str, float],
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` atom counts from ``p(N | targets)`` (see :meth:`n_atoms_probs_given`)."""
        return torch.multinomial(self.n_atoms_probs_given(targets), n, replacement=True, generator=generator)

    def log_prob_n_atoms(self, n_atoms: torch.Tensor) -> torch.Tensor:
        probs = torch.tensor(self.n_atoms_hist, dtype=torch.float64, device=n_atoms.device)
        probs = probs / probs.sum()
        idx = n_atoms.clamp(max=self.max_atoms)
        return torch.log(probs[idx].clamp(min=1e-30)).to(torch.float32)

    def to_dict(self) -> dict:
        return {"n_atoms_hist": self.n_atoms_hist, "properties": self.properties, "mean": self.mean,
                "std": self.std, "low": self.low, "high": self.high, "joint_counts": self.joint_counts,
                "joint_edges": self.joint_edges}

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetStats":
        return cls(**d)


def select_indices(data: QM9Data, *, split: str, max_molecules: int | None = None,
                   max_atoms: int | None = None) -> dict[str, torch.Tensor]:
    """Training, validation and test molecule indices (EDM's splits).

    Args:
        split: the training split, ``train``, ``da`` or ``db``.
        max_molecules: keep the first N training molecules (and ``max(64, N // 10)`` validation ones).
        max_atoms: drop training and validation molecules with more atoms.

    A :class:`~molgen.config.DataConfig` gives these as ``select_indices(data, **cfg.data.selection())``.
    """
    splits = edm_splits(data.num_molecules)
    train = splits[split]
    valid = splits["valid"]
    if max_atoms is not None:
        n = data.n_atoms
        train = train[n[train] <= max_atoms]
        valid = valid[n[valid] <= max_atoms]
    if max_molecules is not None:
        train = train[: max_molecules]
        valid = valid[: max(64, max_molecules // 10)]
    if train.numel() == 0:
        raise MolgenError("no training molecules left after data.max_atoms / data.max_molecules")
    return {"train": train, "valid": valid, "test": splits["test"]}


def compute_stats(data: QM9Data, train_idx: torch.Tensor, properties: Sequence[str]) -> DatasetStats:
    """Atom-count histogram and property mean/std over the training molecules."""
    n = data.n_atoms[train_idx]
    hist = torch.bincount(n, minlength=int(data.n_atoms.max()) + 1).tolist()
    names = [get_property(p).name for p in properties]
    mean, std, low, high = [], [], [], []
    joint_counts, joint_edges = {}, {}
    for name in names:
        values = data.property(name)[train_idx].double()
        mean.append(float(values.mean()))
        std.append(float(values.std().clamp(min=1e-8)))
        low.append(float(torch.quantile(values, 0.005)))
        high.append(float(torch.quantile(values, 0.995)))
        lo, hi = float(values.min()), float(values.max())
        edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, JOINT_BINS + 1, dtype=torch.float64)
        bins = torch.clamp(torch.bucketize(values, edges) - 1, 0, JOINT_BINS - 1)
        counts = torch.zeros(len(hist), JOINT_BINS, dtype=torch.long)
        counts.index_put_((n, bins), torch.ones_like(n), accumulate=True)
        joint_counts[name], joint_edges[name] = counts.tolist(), edges.tolist()
    return DatasetStats(n_atoms_hist=hist, properties=names, mean=mean, std=std, low=low, high=high,
                        joint_counts=joint_counts, joint_edges=joint_edges)


def make_graphs(data: QM9Data, indices: torch.Tensor, stats: DatasetStats) -> list[Data]:
    """One PyG ``Data`` per molecule, with normalized conditioning labels."""
    if stats.properties:
        cols = torch.stack([data.property(p) for p in stats.properties], dim=1)
        y_all = stats.normalize(cols[indices].float())
    else:
        y_all = torch.zeros(len(indices), 0)
    graphs = []
    ptr = data.ptr
    for k, i in enumerate(indices.tolist()):
        a, b = int(ptr[i]), int(ptr[i + 1])
        graphs.append(
            Data(
                pos=data.positions[a:b],
                atom_types=data.atom_types[a:b],
                charges=data.charges[a:b],
                y=y_all[k : k + 1],
                y_mask=torch.ones_like(y_all[k : k + 1]),
                smiles=data.smiles[i],
                num_nodes=b - a,
            )
        )
    return graphs
