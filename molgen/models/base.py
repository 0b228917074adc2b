"""The Generator protocol every family implements, identical for all of them.

``loss(batch)`` trains, ``sample(n, ...)`` generates, ``log_likelihood(batch)`` scores. The training
loop, the CLI and the metrics only ever talk to this interface (see the project's design guide:
MOSES drifted into three ``sample`` signatures for want of one).

``sample`` is a template written once here: it resolves the sampler options (one typed dataclass
per family, :mod:`molgen.models.options`), seeds one CPU generator, resolves atom counts and
targets, samples in chunks of ``sample_batch_size`` molecules and records the targets on the
molecules. A family implements only :meth:`Generator.sample_chunk` (and, if it needs per-molecule
draws made before the chunks or work after all of them, :meth:`Generator.prepare_sampling` /
:meth:`Generator.finish_sampling`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from molgen.chem.elements import Molecule3D
from molgen.config import RunConfig
from molgen.data.graphs import DatasetStats
from molgen.data.properties import get_property
from molgen.errors import MolgenError
from molgen.models.conditioning import masked_labels
from molgen.models.options import SampleOptions, resolve_options

#: Targets as the user gives them: property name -> one value for all samples, or one per sample.
Targets = Mapping[str, float | Sequence[float]]


@dataclass
class SampleChunk:
    """One chunk of a ``sample`` call: what :meth:`Generator.sample_chunk` generates.

    Args:
        counts: ``[B]`` atom counts.
        y, y_mask: ``[B, P]`` normalized targets and their mask, on the model's device.
        extras: the chunk's slice of what :meth:`Generator.prepare_sampling` returned.
    """

    counts: Tensor
    y: Tensor
    y_mask: Tensor
    extras: dict[str, Any] = field(default_factory=dict)


def sampling_generator(seed: int | None) -> torch.Generator:
    """The CPU generator of a ``sample`` call: seeded, else seeded from the global torch generator
    (so that ``torch.manual_seed`` still makes unseeded calls repeatable)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator().manual_seed(int(seed))


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
    #: the family's sampler options (fields default to the family config's values of the same name)
    options_cls: ClassVar[type[SampleOptions]] = SampleOptions
    #: False for families whose training loss differentiates through the network's own gradient
    #: (double backward), which ``torch.compile`` does not support (``train.compile`` is refused).
    supports_compile: ClassVar[bool] = True

    def __init__(self, cfg: RunConfig, stats: DatasetStats) -> None:
        super().__init__()
        self.cfg = cfg
        self.stats = stats

    @property
    def fc(self) -> Any:
        """The family's own config section (``cfg.family``)."""
        return self.cfg.family

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

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Targets | None = None,
        n_atoms: int | Sequence[int] | Tensor | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> list[Molecule3D]:
        """Generate ``n`` molecules, optionally for property targets (user units) and atom counts.

        Args:
            n: number of molecules.
            cond: targets, property -> one value or ``n`` values (user units).
            n_atoms: one atom count for all, ``n`` counts, or ``None`` (the training histogram).
            seed: seed of the CPU generator every random draw comes from (``None``: from torch's).
            batch_size: molecules per chunk (default ``family.sample_batch_size``).
            progress: show a progress bar.
            options: the family's sampler options (:attr:`options_cls`: ``steps``, ``guidance``,
                ``composition`` and the family's own); unknown names are a one-line error.
        """
        opts = self.sample_options(**options)
        gen = sampling_generator(seed)
        counts = self.resolve_n_atoms(n, n_atoms, gen)
        y_all, mask_all = self.resolve_cond(n, cond)
        extras = self.prepare_sampling(n, opts, gen, seed)
        bs = batch_size or self.fc.sample_batch_size
        if bs < 1:
            raise MolgenError("the sampling batch size must be at least 1")
        outputs: list[Any] = []
        for start in range(0, n, bs):
            sl = slice(start, min(n, start + bs))
            chunk = SampleChunk(counts[sl], y_all[sl], mask_all[sl], {k: v[sl] for k, v in extras.items()})
            outputs.extend(self.sample_chunk(chunk, opts, gen, progress))
        mols = self.finish_sampling(outputs, extras, opts, gen)
        annotate_targets(mols, cond)
        return mols

    def sample_options(self, **overrides: Any) -> SampleOptions:
        """The validated options of one ``sample`` call (the config's values where not given)."""
        return resolve_options(self.options_cls, self.fc, self.name, overrides)

    def prepare_sampling(self, n: int, opts: SampleOptions, gen: torch.Generator,
                         seed: int | None) -> dict[str, Any]:
        """Per-molecule values drawn before the chunks (each sliceable, length ``n``); default none."""
        return {}

    @abstractmethod
    def sample_chunk(self, chunk: SampleChunk, opts: SampleOptions, gen: torch.Generator,
                     progress: bool) -> list[Any]:
        """One chunk's samples (molecules, or what :meth:`finish_sampling` turns into molecules)."""

    def finish_sampling(self, outputs: list[Any], extras: dict[str, Any], opts: SampleOptions,
                        gen: torch.Generator) -> list[Molecule3D]:
        """All chunks' outputs -> molecules; by default the chunks already made molecules."""
        return outputs

    def log_likelihood(self, batch: Any) -> Tensor | None:
        """Per-molecule log-likelihood in nats (exact or a bound, see the family), or ``None``."""
        return None

    # ---------------------------------------------------------------- helpers shared by families
    def labels(self, batch: Any, train: bool) -> tuple[Tensor, Tensor]:
        """Normalized labels and mask ``[B, P]`` of a batch; dropped at random in training
        (:func:`molgen.models.conditioning.masked_labels`)."""
        return masked_labels(batch, len(self.properties), self.fc, train)

    def randn(self, shape: tuple[int, ...], gen: torch.Generator | None) -> Tensor:
        """Standard normal noise drawn on the CPU generator (seeded runs match across devices)."""
        return torch.randn(shape, generator=gen).to(self.device)


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


#: ``--model`` name -> family class, filled by :func:`register` (looked up by :mod:`molgen.models.registry`)
FAMILIES: dict[str, type[Generator]] = {}
G = TypeVar("G", bound=type[Generator])


def register(name: str) -> Callable[[G], G]:
    """Class decorator: make a family available as ``--model name``."""

    def deco(cls: G) -> G:
        cls.name = name
        FAMILIES[name] = cls
        return cls

    return deco


def annotate_targets(mols: list[Molecule3D], cond: Targets | None) -> None:
    """Record the requested targets (user units) as ``target_<prop>`` on each molecule."""
    if not cond:
        return
    n = len(mols)
    for key, value in cond.items():
        values = np.broadcast_to(np.asarray(value, dtype=float).ravel(), (n,))
        for m, v in zip(mols, values):
            m.properties[f"target_{key}"] = float(v)
