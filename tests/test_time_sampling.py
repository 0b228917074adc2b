"""Beta training times of the point-cloud families (``family.time_alpha`` / ``time_beta``).

Checked against the Beta law's closed forms (mean, a tail probability), the uniform law in
validation, and a fit on a tiny batch; the diffusion times are read where the loss uses them.
"""

from __future__ import annotations

import pytest
import torch
from torch_geometric.loader import DataLoader

from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.errors import MolgenError
from molgen.models.diffusion import EquivariantDiffusion
from molgen.models.flow_matching import EquivariantFlowMatching

LOW_NOISE = {"time_alpha": 1.0, "time_beta": 3.0}  # Beta(1, 3): mean 1/4, P(t < 0.1) = 1 - 0.9^3


def _model(qm9, cls, name: str, family: dict, n_mols: int = 16):
    cfg = resolve_config(name, cls.config_cls, preset="tiny", overrides={"data": {"properties": []}, "family": family})
    idx = select_indices(qm9, **cfg.data.selection())
    stats = compute_stats(qm9, idx["train"], cfg.data.properties)
    torch.manual_seed(0)
    model = cls(cfg, stats)
    batch = next(iter(DataLoader(make_graphs(qm9, idx["train"][:n_mols], stats), batch_size=n_mols)))
    return model, batch


def _diffusion_times(model, batch, calls: int) -> torch.Tensor:
    """The integer times the diffusion loss draws over ``calls`` batches, as fractions of T."""
    seen, inner = [], model._diffusion_error

    def record(b, t_int, train):
        seen.append(t_int.clone())
        return inner(b, t_int, train)

    model._diffusion_error = record
    with torch.no_grad():
        for _ in range(calls):
            model.loss(batch)
    return torch.cat(seen).float() / model.fc.timesteps


def test_diffusion_trains_at_beta_times_and_validates_at_uniform_times(qm9) -> None:
    model, batch = _model(qm9, EquivariantDiffusion, "diffusion", LOW_NOISE)
    torch.manual_seed(1)
    t = _diffusion_times(model.train(), batch, 250)  # 4,000 draws
    assert abs(t.mean().item() - 0.25) < 0.015
    assert abs((t < 0.1).float().mean().item() - 0.271) < 0.03
    t = _diffusion_times(model.eval(), batch, 250)
    assert abs(t.mean().item() - 0.5) < 0.02 and abs((t < 0.1).float().mean().item() - 0.1) < 0.02


def test_default_diffusion_times_are_edms_uniform_integers(qm9) -> None:
    model, batch = _model(qm9, EquivariantDiffusion, "diffusion", {})
    torch.manual_seed(2)
    t = _diffusion_times(model.train(), batch, 250) * model.fc.timesteps
    assert (t - t.round()).abs().max() < 1e-3 and t.min() >= 0 and t.max() <= model.fc.timesteps
    assert abs(t.mean().item() / model.fc.timesteps - 0.5) < 0.02


def test_flow_matching_validates_at_uniform_times(qm9) -> None:
    model, batch = _model(qm9, EquivariantFlowMatching, "flow-matching", {"time_alpha": 2.0})
    torch.manual_seed(3)
    assert abs(model.train().train_times(100_000, batch.pos).mean().item() - 2 / 3) < 0.005
    assert abs(model.eval().train_times(100_000, batch.pos).mean().item() - 0.5) < 0.005


def test_low_noise_diffusion_fits_a_tiny_batch_and_samples(qm9) -> None:
    model, batch = _model(qm9, EquivariantDiffusion, "diffusion", LOW_NOISE)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # the same noise and time draws every step: the loss change is the fit
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]
    mols = model.sample(4, steps=5, seed=3)
    assert len(mols) == 4 and all(abs(m.positions.mean(0)).max() < 1e-4 for m in mols)


@pytest.mark.parametrize("cls,name", [(EquivariantDiffusion, "diffusion"), (EquivariantFlowMatching, "flow-matching")])
def test_bad_time_law_gets_one_line(qm9, cls, name: str) -> None:
    with pytest.raises(MolgenError, match="must be > 0"):
        _model(qm9, cls, name, {"time_beta": 0.0})
