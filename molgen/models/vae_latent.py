"""Latent-space checks of the graph VAE: linear-probe R² of properties and latent interpolation.

The encoder ``q(z | G)`` of :class:`molgen.models.vae.GraphVAE` maps a 3D molecule to an invariant
graph-level latent. A latent space worth having (Gómez-Bombarelli et al., ACS Cent. Sci. 2018)
places molecules so that properties are (nearly) linear in it and straight lines between two
molecules decode to valid molecules in between: :func:`latent_probe_r2` and :func:`interpolate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from molgen.chem.elements import Molecule3D
from molgen.data.properties import get_property
from molgen.errors import MolgenError
from molgen.models.base import Targets
from molgen.models.vae import GraphVAE


def _batches(data: Any, batch_size: int = 256) -> Iterable[Any]:
    """A loader, an iterable of batches, one batch / graph, or a list of graphs -> batches."""
    from torch_geometric.loader import DataLoader

    if isinstance(data, Data):  # a Batch is a Data too
        return [data if isinstance(data, Batch) else Batch.from_data_list([data])]
    if isinstance(data, Sequence) and data and isinstance(data[0], Data) and not isinstance(data[0], Batch):
        return DataLoader(list(data), batch_size=batch_size)
    return data


@torch.no_grad()
def latent_means(model: GraphVAE, data: Any) -> tuple[Tensor, Tensor]:
    """Posterior means ``[M, d]`` and the graphs' normalized labels ``y [M, P]`` (CPU), in data order."""
    mus, ys = [], []
    for batch in _batches(data):
        batch = batch.to(model.device)
        mus.append(model.encode(batch)[0].cpu())
        P = len(model.properties)
        ys.append(batch.y.view(batch.num_graphs, P).float().cpu() if P else torch.zeros(batch.num_graphs, 0))
    return torch.cat(mus), torch.cat(ys)


def linear_probe_r2(features: Tensor, targets: Tensor, *, seed: int = 0) -> Tensor:
    """R² of a linear probe: least squares (with intercept) on a random half, R² on the other half.

    Args:
        features: ``[M, d]``; targets: ``[M, T]`` (or ``[M]``); seed: of the random split.

    Returns:
        ``[T]`` held-out ``1 - SS_res / SS_tot`` (1: exactly linear; <= 0: no better than the mean).
    """
    targets = targets.reshape(targets.shape[0], -1).double()
    M = features.shape[0]
    if M < 4:
        raise MolgenError("a linear probe needs at least 4 molecules")
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(seed))
    train, test = perm[: M // 2], perm[M // 2:]
    X = torch.cat([features.double(), torch.ones(M, 1, dtype=torch.float64)], dim=1)
    W = torch.linalg.lstsq(X[train], targets[train], driver="gelsd").solution
    residual = targets[test] - X[test] @ W
    total = targets[test] - targets[test].mean(0)
    return 1.0 - residual.pow(2).sum(0) / total.pow(2).sum(0).clamp(min=1e-300)


def latent_probe_r2(model: GraphVAE, data: Any, properties: Sequence[str] | Mapping[str, Any] | None = None,
                    *, seed: int = 0) -> dict[str, float]:
    """Linear-probe R² of each property from the latent mean (closed-form least squares, see
    :func:`linear_probe_r2`).

    Args:
        model: a trained :class:`GraphVAE`.
        data: a DataLoader / iterable of batches, a batch, or a list of graphs (``make_graphs``).
        properties: names among the model's conditioning properties (read from the graphs' labels;
            default all of them), or ``{name: values [M]}`` in data order for any other quantity.
        seed: of the train / held-out split.
    """
    mu, labels = latent_means(model, data)
    if properties is None:
        properties = model.properties
    if isinstance(properties, Mapping):
        names = list(properties)
        values = torch.stack([torch.as_tensor(np.asarray(v, dtype=np.float64)).flatten()
                              for v in properties.values()], dim=1)
    else:
        names = [get_property(p).name for p in properties]
        missing = [p for p in names if p not in model.properties]
        if missing:
            raise MolgenError(f"the graphs carry no labels for {', '.join(missing)}: pass {{name: values}} instead")
        values = labels[:, [model.properties.index(p) for p in names]]
    if not names:
        return {}
    if values.shape[0] != mu.shape[0]:
        raise MolgenError(f"got {values.shape[0]} property values for {mu.shape[0]} molecules")
    r2 = linear_probe_r2(mu, values, seed=seed)
    return {name: float(v) for name, v in zip(names, r2)}


def _as_graph(mol: Molecule3D | Data) -> Data:
    if isinstance(mol, Data):
        return Data(pos=mol.pos, atom_types=mol.atom_types, charges=mol.charges, num_nodes=mol.num_nodes)
    n = mol.num_atoms
    charges = np.zeros(n) if mol.charges is None else mol.charges
    return Data(pos=torch.as_tensor(np.asarray(mol.positions), dtype=torch.float32),
                atom_types=torch.as_tensor(np.asarray(mol.atom_types), dtype=torch.long),
                charges=torch.as_tensor(np.asarray(charges), dtype=torch.long), num_nodes=n)


@torch.no_grad()
def interpolate(model: GraphVAE, mol_a: Molecule3D | Data, mol_b: Molecule3D | Data, steps: int = 8, *,
                n_atoms: int | Sequence[int] | None = None, cond: Targets | None = None,
                seed: int = 0, **decode: Any) -> list[Molecule3D]:
    """Decode ``steps`` points on the straight line between the latent means of two molecules.

    Args:
        model: a trained :class:`GraphVAE`.
        mol_a, mol_b: 3D molecules with coordinates (``Molecule3D`` or a graph from ``make_graphs``).
        steps: number of points, both ends included (>= 2).
        n_atoms: atom count(s) of the decoded molecules; default the two molecules' counts
            interpolated linearly and rounded.
        cond: optional targets (user units) for the decoder and prior; default none.
        seed: ETKDG seeds are ``seed, seed + 1, ...``.
        decode: keywords of :meth:`GraphVAE.decode_latents` (e.g. ``top_k=1``: greedy strings).

    Returns:
        ``steps`` molecules, ``properties["interpolation_t"]`` in [0, 1].
    """
    if steps < 2:
        raise MolgenError("interpolation needs at least 2 steps")
    batch = Batch.from_data_list([_as_graph(mol_a), _as_graph(mol_b)]).to(model.device)
    mu, _ = model.encode(batch)
    t = torch.linspace(0.0, 1.0, steps, device=mu.device)
    z = (1 - t)[:, None] * mu[0] + t[:, None] * mu[1]
    if n_atoms is None:
        na, nb = torch.bincount(batch.batch, minlength=2).float()
        n_atoms = torch.round((1 - t) * na + t * nb).long().cpu()
    counts = model.resolve_n_atoms(steps, n_atoms)
    y, y_mask = model.resolve_cond(steps, cond)
    mols = model.decode_latents(z, y, y_mask, counts, seeds=list(range(seed, seed + steps)), **decode)
    for m, ti in zip(mols, t.tolist()):
        m.properties["interpolation_t"] = ti
    return mols
