"""The Generator protocol every family implements, identical for all of them.

``loss(batch)`` trains, ``sample(n, ...)`` generates, ``log_likelihood(batch)`` scores. The training
loop, the CLI and the metrics only ever talk to this interface (see DESIGN.md: MOSES drifted into
three ``sample`` signatures for want of one).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from molgen.chem.elements import Molecule3D
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.data.properties import get_property
from molgen.errors import MolgenError

#: Targets as the user gives them: property name -> one value for all samples, or one per sample.
Targets = Mapping[str, float | Sequence[float]]


class Generator(nn.Module, ABC):
    """Base class of a generative family.

    Args:
        cfg: the resolved run configuration (``cfg.family`` is the family's own dataclass).
        stats: training-set statistics (atom-count histogram, property normalization).

    Subclasses set ``name`` and ``config_cls`` and implement the three methods below.
    ``forward(batch)`` is ``loss(batch)`` so that DistributedDataParallel sees the computation.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type]
    #: False for families whose training loss differentiates through the network's own gradient
    #: (double backward), which ``torch.compile`` does not support (``train.compile`` is refused).
    supports_compile: ClassVar[bool] = True

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__()
        self.cfg = cfg
        self.stats = stats

    @property
    def properties(self) -> list[str]:
        return list(self.stats.properties)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batch: Any) -> dict[str, Tensor]:
        return self.loss(batch)

    @abstractmethod
    def loss(self, batch: Any) -> dict[str, Tensor]:
        """Training objective on a batch; ``"loss"`` is minimized, other entries are logged."""

    @abstractmethod
    def sample(
        self,
        n: int,
        *,
        cond: Targets | None = None,
        n_atoms: int | Sequence[int] | Tensor | None = None,
        **sampler_opts: Any,
    ) -> list[Molecule3D]:
        """Generate ``n`` molecules, optionally for property targets (user units) and atom counts."""

    def log_likelihood(self, batch: Any) -> Tensor | None:
        """Per-molecule log-likelihood in nats (exact or a bound, see the family), or ``None``."""
        return None

    # ---------------------------------------------------------------- helpers shared by families

    def resolve_n_atoms(
        self, n: int, n_atoms: int | Sequence[int] | Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n]`` atom counts: given (one for all or one each) or drawn from the training histogram."""
        if n_atoms is None:
            return self.stats.sample_n_atoms(n, generator)
        counts = torch.as_tensor(n_atoms, dtype=torch.long).flatten()
        if counts.numel() == 1:
            counts = counts.expand(n).clone()
        if counts.numel() != n:
            raise MolgenError(f"got {counts.numel()} atom counts for {n} molecules")
        lo, hi = 1, self.stats.max_atoms
        if int(counts.min()) < lo or int(counts.max()) > hi:
            raise MolgenError(f"--n-atoms must be between {lo} and {hi} (the training data's range)")
        return counts

    def resolve_cond(self, n: int, cond: Targets | None) -> tuple[Tensor, Tensor]:
        """Targets in user units -> normalized ``y [n, P]`` and ``y_mask [n, P]`` on the model's device."""
        P = len(self.properties)
        y = torch.zeros(n, P)
        mask = torch.zeros(n, P)
        for key, value in (cond or {}).items():
            name = get_property(key).name
            if name not in self.properties:
                supported = ", ".join(self.properties) or "none (unconditional model)"
                raise MolgenError(f"this model was not trained on '{name}'; it supports: {supported}")
            j = self.properties.index(name)
            values = torch.as_tensor(value, dtype=torch.float32).flatten()
            if values.numel() not in (1, n):
                raise MolgenError(f"target '{name}' has {values.numel()} values for {n} molecules")
            y[:, j] = values
            mask[:, j] = 1.0
        if P:
            y = self.stats.normalize(y) * mask
        return y.to(self.device), mask.to(self.device)
