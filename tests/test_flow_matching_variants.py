"""flow-matching's variants: data prediction, Beta training times, categorical atom types and charges.

Checked against independent references: rotated inputs (equivariance of positions, invariance of
the type/charge logits), the masking interpolant's keep probability against its definition, the
CTMC step's unmask probability against ``dt / (1 - t)``, and Euler sampling of a data-predicting
field against the closed-form path of a constant prediction.
"""

from __future__ import annotations

import pytest
import torch
from scipy.spatial.transform import Rotation
from torch_geometric.loader import DataLoader

from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.errors import MolgenError
from molgen.models.base import SampleChunk
from molgen.models.categorical import CHARGES, CategoricalAtoms, Tokens
from molgen.models.flow_matching import EquivariantFlowMatching

DATA = {"prediction": "data", "solver": "euler", "time_alpha": 2.0}
CAT = {**DATA, "atom_types": "categorical"}
VARIANTS = {"data": DATA, "categorical": CAT, "categorical-velocity": {"atom_types": "categorical", "solver": "euler"}}


def _model(qm9, family, n_mols=16, properties=()):
    overrides = {"data": {"properties": list(properties)}, "family": dict(family)}
    cfg = resolve_config("flow-matching", EquivariantFlowMatching.config_cls, preset="tiny", overrides=overrides)
    idx = select_indices(qm9, **cfg.data.selection())
    stats = compute_stats(qm9, idx["train"], cfg.data.properties)
    torch.manual_seed(0)
    model = EquivariantFlowMatching(cfg, stats)
    batch = next(iter(DataLoader(make_graphs(qm9, idx["train"][:n_mols], stats), batch_size=n_mols)))
    return model, batch


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loss_goes_down_on_a_tiny_batch_and_sampling_works(qm9, variant: str) -> None:
    model, batch = _model(qm9, VARIANTS[variant])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # the same noise draws every step: the loss change is the fit
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]
    mols = model.sample(6, steps=4, seed=3)
    again = model.sample(6, steps=4, seed=3)
    assert [m.atom_types.tolist() for m in mols] == [m.atom_types.tolist() for m in again]
    for m, n in zip(mols, again):
        assert (m.positions == n.positions).all() and abs(m.positions.mean(0)).max() < 1e-5
        if model.categorical is not None:  # whole categories: no rounded stray charges
            assert set(m.charges.tolist()) <= set(CHARGES)
    assert model.log_likelihood(batch) is None  # no tractable likelihood (documented)


def test_categorical_outputs_are_invariant_and_positions_equivariant(qm9) -> None:
    model, batch = _model(qm9, CAT)
    model.eval()
    cat = model.categorical
    B, bi = batch.num_graphs, batch.batch
    x = model.positions(batch)
    torch.manual_seed(0)
    h = cat.features(cat.corrupt(cat.clean(batch), torch.full((x.shape[0],), 0.5)))
    t = torch.full((B,), 0.5)
    y = torch.zeros(B, 0)
    rot = torch.as_tensor(Rotation.random(random_state=4).as_matrix(), dtype=torch.float32)
    with torch.no_grad():
        ox, oh = model.net(x, h, t, bi, B, y, y.bool())
        rx, rh = model.net(x @ rot.T, h, t, bi, B, y, y.bool())
    assert oh.shape == (x.shape[0], cat.out_dim) == (x.shape[0], 5 + 3)
    assert torch.allclose(rh, oh, atol=1e-4)
    assert torch.allclose(rx, ox @ rot.T, atol=1e-4)


def test_masking_interpolant_keeps_a_token_with_probability_t() -> None:
    cat = CategoricalAtoms(5, include_charges=True)
    n = 200_000
    clean = Tokens(torch.randint(0, 5, (n,)), torch.randint(0, 3, (n,)))
    torch.manual_seed(0)
    for t in (0.0, 0.3, 0.8, 1.0):
        tok = cat.corrupt(clean, torch.full((n,), t))
        kept_t = (tok.types != 5).float()
        assert abs(kept_t.mean().item() - t) < 0.005
        assert ((tok.types == clean.types) | (tok.types == 5)).all()  # kept tokens are the data's
        assert abs((tok.charges != 3).float().mean().item() - t) < 0.005
    feats = cat.features(tok)
    assert feats.shape == (n, 6 + 4) and (feats.sum(-1) == 2).all()


def test_ctmc_step_unmasks_with_probability_dt_over_one_minus_t_and_all_at_the_end() -> None:
    cat = CategoricalAtoms(5, include_charges=True)
    n = 100_000
    masked = cat.masked(n, "cpu")
    logits = torch.log(torch.tensor([0.1, 0.6, 0.1, 0.1, 0.1, 0.2, 0.7, 0.1]))[None].repeat(n, 1)
    gen = torch.Generator().manual_seed(0)
    tok = cat.step(masked, logits, t=0.5, dt=0.1, gen=gen)  # p = 0.1 / 0.5
    unmasked = tok.types != 5
    assert abs(unmasked.float().mean().item() - 0.2) < 0.005
    # draws follow softmax(logits): type 1 with probability 0.6 among the unmasked
    assert abs((tok.types[unmasked] == 1).float().mean().item() - 0.6) < 0.01
    # an unmasked token stays, whatever the logits say
    again = cat.step(tok, torch.zeros_like(logits), t=0.6, dt=0.1, gen=gen)
    assert (again.types[unmasked] == tok.types[unmasked]).all()
    last = cat.step(masked, logits, t=0.9, dt=0.1, gen=gen)
    assert (last.types != 5).all() and (last.charges != 3).all()
    assert set(cat.charge_values(last).tolist()) <= set(CHARGES)


def test_data_prediction_euler_lands_on_the_prediction(qm9) -> None:
    """With a constant clean prediction z1*, Euler steps of ``z += dt / (1 - t) (z1* - z)`` reach z1*
    exactly at t = 1, from any prior, in any number of steps."""
    model, _ = _model(qm9, DATA)
    target_x = None

    class Constant(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # the model's device comes from its parameters

        def forward(self, zx, zh, t, batch_index, num_graphs, y, y_mask):
            nonlocal target_x
            if target_x is None:
                target_x = torch.randn(zx.shape, generator=torch.Generator().manual_seed(9))
                target_x = target_x - target_x.mean(0)  # one molecule: zero CoM
            return target_x - zx, torch.ones_like(zh) - zh  # the step to the clean molecule

    model.net = Constant()
    chunk = SampleChunk(counts=torch.tensor([7]), y=torch.zeros(1, 0), y_mask=torch.zeros(1, 0, dtype=torch.bool),
                        extras={})
    for steps in (1, 3, 10):
        x, h = model.sample_state(chunk, model.sample_options(steps=steps), torch.Generator().manual_seed(steps), False)
        assert torch.allclose(x, target_x, atol=1e-5) and torch.allclose(h, torch.ones_like(h), atol=1e-5)


def test_beta_training_times_follow_the_configured_distribution(qm9) -> None:
    model, batch = _model(qm9, DATA)
    torch.manual_seed(0)
    t = model.train_times(100_000, batch.pos)
    assert abs(t.mean().item() - 2 / 3) < 0.005  # Beta(2, 1): mean 2/3, P(t > 0.9) = 0.19
    assert abs((t > 0.9).float().mean().item() - 0.19) < 0.005


@pytest.mark.parametrize("family,message", [
    ({"prediction": "data"}, "set family.solver=euler"),
    ({"atom_types": "categorical", "solver": "heun"}, "set family.solver=euler"),
    ({"prediction": "x0"}, "unknown family.prediction 'x0'"),
    ({"atom_types": "dirichlet", "solver": "euler"}, "unknown family.atom_types 'dirichlet'"),
    ({**DATA, "time_alpha": 0.0}, "must be > 0"),
])
def test_bad_variant_options_get_one_line(qm9, family, message: str) -> None:
    with pytest.raises(MolgenError, match=message):
        _model(qm9, family)


def test_categorical_guidance_runs_with_labels(qm9) -> None:
    model, _ = _model(qm9, CAT, properties=("gap",))
    mols = model.sample(4, cond={"gap": 6.5}, guidance=1.0, steps=3, seed=0)
    assert len(mols) == 4 and all(m.properties.get("target_gap") == 6.5 for m in mols)
