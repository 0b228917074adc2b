"""The oracle: a QM9 property regressor on the shared backbone, and its learned embedding.

EDM's conditional protocol scores generated molecules with property classifiers trained on the
half ``Da`` of the QM9 training split (the generator sees only ``Db``). molgen's oracle is one
multi-task regressor of the six protocol properties (alpha, gap, homo, lumo, mu, Cv) from atom
types and 3D positions only (no charges, no bonds: generated molecules have neither reliably).
Its pooled graph representation (the input of the regression head) is also the learned feature
space in which the metrics suite computes FD, KID, MMD and KDE (:mod:`molgen.metrics.embedding`).

Architecture: one-hot atom types -> :class:`~molgen.nn.backbone.EquivariantBackbone` (fully
connected, no condition) -> per-atom MLP -> ``[sum / 10, mean]`` pooling (extensive and intensive
properties) = the embedding -> MLP -> normalized predictions, de-normalized with the ``Da`` mean/std.

The trained weights ship with the package (``molgen/pretrained/oracle.pt``); ``scripts/train_oracle.py``
retrains them.

Version: :attr:`PropertyOracle.version` is the first 12 hex digits of the SHA-256 of the oracle's
weights (:func:`molgen.safe_load.weights_digest` of ``{"model": state_dict}``, buffers ``mean`` /
``std`` included), computed from the loaded tensors, so a file without an integrity digest gets
one too, and for a file written by :meth:`PropertyOracle.save` it is the start of the file's
``integrity.sha256``. Every metric that depends on the oracle (conditional MAE, hit rate, the
``embedding`` group of ``molgen benchmark``) is reported with it (MLflow tag :data:`ORACLE_VERSION_TAG`,
JSON key ``oracle_version``), and cached reference embeddings are keyed by it.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from molgen.chem.elements import ELEMENTS, Molecule3D
from molgen.config import BackboneConfig, from_dict
from molgen.errors import MolgenError
from molgen.io_utils import atomic_torch_save
from molgen.safe_load import safe_torch_load, weights_digest, with_integrity
from molgen.nn.graph import scatter_mean, scatter_sum

#: The properties of EDM's conditional protocol, in the oracle's output order.
ORACLE_PROPERTIES: tuple[str, ...] = ("alpha", "gap", "homo", "lumo", "mu", "Cv")
ORACLE_FORMAT = "molgen-oracle"
DEFAULT_ORACLE = Path(__file__).resolve().parent / "pretrained" / "oracle.pt"
#: Environment variable naming other oracle weights (e.g. retrained ones) for every command.
ORACLE_ENV = "MOLGEN_ORACLE"
#: MLflow tag naming the oracle version behind a run's oracle-dependent metrics.
ORACLE_VERSION_TAG = "molgen.oracle_version"
#: Hex digits of the weights' SHA-256 kept in :attr:`PropertyOracle.version`.
VERSION_DIGITS = 12


def oracle_file() -> Path:
    """``$MOLGEN_ORACLE`` if set, else the shipped ``molgen/pretrained/oracle.pt``."""
    env = os.environ.get(ORACLE_ENV)
    return Path(env) if env else DEFAULT_ORACLE


class PropertyOracle(nn.Module):
    """Invariant property regressor.

    Args:
        bcfg: backbone configuration (``cond_dim`` is unused but kept for the shared constructor).
        properties: output property names.
        mean, std: per-property normalization (user units) of the training data.

    Shapes: atom_types ``[N]``, pos ``[N, 3]``, batch ``[N]`` -> ``[B, P]`` (user units) / ``[B, 2F]``.
    """

    def __init__(self, bcfg: BackboneConfig, properties: Sequence[str], mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        from molgen.nn.backbone import EquivariantBackbone

        self.bcfg = bcfg
        self.properties = list(properties)
        F = bcfg.scalar_dim
        self.backbone = EquivariantBackbone(len(ELEMENTS), bcfg)
        self.atom_mlp = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, F))
        self.head = nn.Sequential(nn.Linear(2 * F, F), nn.SiLU(), nn.Linear(F, len(self.properties)))
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    @property
    def embedding_dim(self) -> int:
        return 2 * self.bcfg.scalar_dim

    @property
    def version(self) -> str:
        """First :data:`VERSION_DIGITS` hex digits of ``weights_digest({"model": state_dict})``;
        recomputed on every access (cheap), so it follows any change of the weights."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return weights_digest({"model": state})[:VERSION_DIGITS]

    def embed(self, atom_types: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """The pooled invariant representation ``[B, 2F]`` (the metrics' learned feature space)."""
        h = nn.functional.one_hot(atom_types, len(ELEMENTS)).to(pos.dtype)
        out = self.backbone(h, pos, batch, None, num_graphs=num_graphs)
        a = self.atom_mlp(out.scalars)
        return torch.cat([scatter_sum(a, batch, num_graphs) / 10.0, scatter_mean(a, batch, num_graphs)], dim=-1)

    def forward_normalized(self, atom_types: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        return self.head(self.embed(atom_types, pos, batch, num_graphs))

    def forward(self, atom_types: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        return self.forward_normalized(atom_types, pos, batch, num_graphs) * self.std + self.mean

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, **extra) -> Path:
        payload = {"format": ORACLE_FORMAT, "backbone": asdict(self.bcfg), "properties": self.properties,
                   "mean": self.mean.tolist(), "std": self.std.tolist(),
                   "model": {k: v.detach().cpu() for k, v in self.state_dict().items()}, **extra}
        atomic_torch_save(with_integrity(payload, ("model",)), path)
        return Path(path)


def load_oracle(path: str | os.PathLike | None = None) -> PropertyOracle:
    """The oracle of :func:`oracle_file` (default) or ``path``; eval mode, CPU."""
    path = Path(path) if path is not None else oracle_file()
    if not path.is_file():
        raise MolgenError(f"oracle weights not found: {path} (run: python scripts/train_oracle.py)")
    payload = safe_torch_load(path, "oracle weights")
    if not isinstance(payload, dict) or payload.get("format") != ORACLE_FORMAT:
        raise MolgenError(f"not a molgen oracle file: {path}")
    bcfg = from_dict(BackboneConfig, payload["backbone"], "backbone.")
    oracle = PropertyOracle(bcfg, payload["properties"], payload["mean"], payload["std"])
    oracle.load_state_dict(payload["model"])
    oracle.meta = {k: v for k, v in payload.items() if k not in ("model",)}
    return oracle.eval()


def _usable(m: Molecule3D) -> bool:
    return m.num_atoms > 0 and bool(np.isfinite(np.asarray(m.positions, dtype=float)).all())


@torch.no_grad()
def oracle_outputs(oracle: PropertyOracle, mols: Sequence[Molecule3D], batch_size: int = 256,
                   device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Predictions ``[n, P]`` (user units) and embeddings ``[n, 2F]`` for 3D molecules.

    Molecules without usable coordinates (no atoms, non-finite positions) get NaN rows, so the
    caller can count them; nothing is dropped silently.
    """
    oracle = oracle.to(device).eval()
    n = len(mols)
    preds = np.full((n, len(oracle.properties)), np.nan, dtype=np.float64)
    embs = np.full((n, oracle.embedding_dim), np.nan, dtype=np.float64)
    usable = [i for i, m in enumerate(mols) if _usable(m)]
    for start in range(0, len(usable), batch_size):
        rows = usable[start : start + batch_size]
        types = torch.cat([torch.as_tensor(np.asarray(mols[i].atom_types), dtype=torch.long) for i in rows])
        pos = torch.cat([torch.as_tensor(np.asarray(mols[i].positions), dtype=torch.float32) for i in rows])
        counts = torch.tensor([mols[i].num_atoms for i in rows])
        batch = torch.repeat_interleave(torch.arange(len(rows)), counts)
        types, pos, batch = types.to(device), pos.to(device), batch.to(device)
        e = oracle.embed(types, pos, batch, len(rows))
        p = oracle.head(e) * oracle.std + oracle.mean
        preds[rows] = p.double().cpu().numpy()
        embs[rows] = e.double().cpu().numpy()
    return preds, embs
