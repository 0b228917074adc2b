"""``flow-matching``: alignment against independent references, invariance, likelihood, solvers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch_geometric.loader import DataLoader

from molgen.config import resolve_config
from molgen.data.graphs import compute_stats, make_graphs, select_indices
from molgen.errors import MolgenError
from molgen.models.flow_matching import EquivariantFlowMatching
from molgen.sampling import ode
from molgen.sampling.align import align_molecule, align_prior, hungarian, kabsch

NAME = "flow-matching"
SMALL = {"num_layers": 1, "scalar_dim": 16, "vector_dim": 4}  # a tiny network for the costly checks


def _model(qm9, family=None, backbone=None, properties=("gap",), n_mols=8, max_atoms=None):
    overrides = {"data": {"properties": list(properties)}, "family": dict(family or {})}
    if backbone:
        overrides["backbone"] = backbone
    cfg = resolve_config(NAME, EquivariantFlowMatching.config_cls, preset="tiny", overrides=overrides)
    idx = select_indices(qm9, **cfg.data.selection())
    stats = compute_stats(qm9, idx["train"], cfg.data.properties)
    torch.manual_seed(0)
    model = EquivariantFlowMatching(cfg, stats)
    chosen = idx["train"]
    if max_atoms is not None:  # QM9's few smallest molecules, wherever they are
        chosen = torch.nonzero(qm9.n_atoms <= max_atoms).flatten()
    batch = next(iter(DataLoader(make_graphs(qm9, chosen[:n_mols], stats), batch_size=n_mols)))
    return model, batch


def _centred(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.normal(size=(n, 3))
    return p - p.mean(0)


# ---------------------------------------------------------------------------------- Kabsch


def test_kabsch_recovers_a_known_rotation() -> None:
    rng = np.random.default_rng(0)
    for seed in range(5):
        rot = Rotation.random(random_state=seed).as_matrix()
        p = _centred(rng, 12)
        got = kabsch(p, p @ rot.T)
        assert np.allclose(got, rot, atol=1e-10)
    # batched over leading dimensions
    rots = Rotation.random(4, random_state=7).as_matrix()
    ps = np.stack([_centred(rng, 6) for _ in range(4)])
    assert np.allclose(kabsch(ps, ps @ np.swapaxes(rots, -1, -2)), rots, atol=1e-10)


def test_kabsch_returns_the_best_proper_rotation_for_a_mirror_image() -> None:
    rng = np.random.default_rng(1)
    mirror = np.diag([1.0, 1.0, -1.0])
    for seed in range(5):
        p = _centred(rng, 9)
        q = p @ (Rotation.random(random_state=seed).as_matrix() @ mirror).T  # an improper map
        got = kabsch(p, q)
        assert abs(np.linalg.det(got) - 1.0) < 1e-10 and np.allclose(got @ got.T, np.eye(3), atol=1e-10)
        # scipy's quaternion (Davenport / Markley) solution only ranges over proper rotations
        ref = Rotation.align_vectors(q, p)[0].as_matrix()
        assert np.allclose(got, ref, atol=1e-8)
        assert ((p @ got.T - q) ** 2).sum() > 1e-3  # a mirror image cannot be matched exactly


# ---------------------------------------------------------------------------------- Hungarian


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_hungarian_equals_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(3):
        p, q = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        costs = {perm: ((p[list(perm)] - q) ** 2).sum() for perm in itertools.permutations(range(n))}
        best = min(costs, key=costs.get)
        got = hungarian(p, q)
        assert tuple(got) == best
        # the family's batched path (positions only, no rotation) gives the same assignment
        perm, rot = align_molecule(p, q, rotation=False)
        assert tuple(perm) == best and np.allclose(rot, np.eye(3))


def test_joint_alignment_recovers_a_rotated_permuted_copy() -> None:
    rng = np.random.default_rng(3)
    for seed in range(5):
        p = _centred(rng, 10)
        rot = Rotation.random(random_state=seed).as_matrix()
        shuffle = rng.permutation(10)
        q = (p @ rot.T)[shuffle]
        perm, got = align_molecule(p, q)
        assert np.allclose(p[perm] @ got.T, q, atol=1e-8)


def test_align_prior_lowers_the_transport_cost_and_keeps_zero_com(qm9) -> None:
    model, batch = _model(qm9)
    x1 = model.positions(batch).double()
    B, idx = batch.num_graphs, batch.batch
    torch.manual_seed(0)
    x0 = torch.randn_like(x1)
    x0 = x0 - torch.zeros(B, 3, dtype=x0.dtype).index_add_(0, idx, x0)[idx] / torch.bincount(idx)[idx, None]
    perm, rot = align_prior(x0, x1, idx, B)
    assert (idx[perm] == idx).all()  # atoms stay within their molecule
    aligned = torch.einsum("nij,nj->ni", rot[idx], x0[perm])
    assert ((aligned - x1) ** 2).sum() < 0.5 * ((x0 - x1) ** 2).sum()
    assert torch.allclose(torch.linalg.det(rot), torch.ones(B, dtype=rot.dtype))
    com = torch.zeros(B, 3, dtype=aligned.dtype).index_add_(0, idx, aligned)
    assert com.abs().max() < 1e-10


# ---------------------------------------------------------------------------------- loss


def _loss_moved(model, batch, seed=0):
    model = model.double()
    batch.pos, batch.y, batch.y_mask = batch.pos.double(), batch.y.double(), batch.y_mask.double()
    rot = torch.from_numpy(Rotation.random(random_state=11).as_matrix())
    moved = batch.clone()
    moved.pos = batch.pos @ rot.T + torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64)
    torch.manual_seed(seed)
    a = model.loss(batch)["loss"]
    torch.manual_seed(seed)  # the same draws (prior noise, t, label dropout), not rotated
    b = model.loss(moved)["loss"]
    return a, b


def test_loss_invariant_under_rotation_and_translation_with_a_fixed_seed(qm9) -> None:
    """Kabsch + Hungarian from principal-axes starts make the aligned prior rotate with the data."""
    model, batch = _model(qm9)
    a, b = _loss_moved(model, batch)
    assert torch.isfinite(a) and torch.allclose(a, b, rtol=1e-7, atol=1e-9)


def test_loss_without_rotation_alignment_is_not_invariant(qm9) -> None:
    """Control for the test above: the same seed with an unaligned prior sees a different pair."""
    model, batch = _model(qm9, family={"align_rotation": False})
    a, b = _loss_moved(model, batch)
    assert not torch.allclose(a, b, rtol=1e-4)


# ---------------------------------------------------------------------------------- likelihood


def test_exact_and_hutchinson_log_likelihood_agree_on_average(qm9) -> None:
    model, batch = _model(qm9, family={"solver": "euler"}, n_mols=3, max_atoms=7,
                          backbone=SMALL)
    model.eval()
    exact = model.log_likelihood(batch, exact=True, steps=2)
    again = model.log_likelihood(batch, exact=True, steps=2)
    assert exact.shape == (3,) and torch.isfinite(exact).all() and torch.equal(exact, again)
    est = torch.stack([model.log_likelihood(batch, exact=False, steps=2, seed=s) for s in range(48)])
    sem = est.std(0) / est.shape[0] ** 0.5
    assert ((est.mean(0) - exact).abs() <= 4 * sem + 1e-4).all(), (est.mean(0), exact, sem)
    assert (est.std(0) > 0).all()  # the estimator really is stochastic


def test_log_likelihood_includes_log_p_n(qm9) -> None:
    model, batch = _model(qm9, family={"solver": "euler"}, n_mols=2, backbone=SMALL)
    model.eval()
    with_n = model.log_likelihood(batch, exact=True, steps=1)
    n_atoms = torch.bincount(batch.batch)
    train = select_indices(qm9, **model.cfg.data.selection())["train"]
    hist = torch.bincount(qm9.n_atoms[train], minlength=64).double()
    log_pn = torch.log(hist[n_atoms] / hist.sum()).float()
    y, y_mask = model.labels(batch, train=False)
    without = ode.log_likelihood(model.velocity(batch.batch, 2, y, y_mask),
                                 (model.positions(batch), model.features(batch)), batch.batch, 2,
                                 list(model.dims(n_atoms)), t_data=1.0, t_prior=0.0, steps=1,
                                 method="euler", exact=True)
    assert torch.isfinite(log_pn).all() and torch.allclose(with_n - without, log_pn, atol=1e-4)


# ---------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("solver,calls_per_step", [("euler", 1), ("heun", 2)])
def test_sampling_runs_the_configured_solver_and_steps(qm9, solver: str, calls_per_step: int) -> None:
    model, _ = _model(qm9, family={"solver": solver, "sampling_steps": 7})
    model.eval()
    calls = []
    model.net.register_forward_hook(lambda mod, args, out: calls.append(args[3].max()))
    mols = model.sample(2, n_atoms=[4, 6], seed=0, cond={"gap": 6.5}, guidance=1.0)
    assert len(calls) == 7 * calls_per_step  # guidance batches both passes into one call
    assert [m.num_atoms for m in mols] == [4, 6]
    for m in mols:
        assert np.isfinite(m.positions).all() and np.abs(m.positions.mean(0)).max() < 1e-4
    calls.clear()
    model.sample(1, n_atoms=5, seed=0, steps=3)  # --steps overrides family.sampling_steps
    assert len(calls) == 3 * calls_per_step


def test_euler_and_heun_differ_but_agree_with_many_steps(qm9) -> None:
    """Both integrate the same field: close for small steps, not identical for few."""
    model, _ = _model(qm9, family={"solver": "euler"}, backbone=SMALL)
    model.eval()
    a = model.sample(1, n_atoms=6, seed=1, steps=64)[0].positions
    b4 = model.sample(1, n_atoms=6, seed=1, steps=4)[0].positions
    model.fc.solver = "heun"
    c = model.sample(1, n_atoms=6, seed=1, steps=32)[0].positions
    c4 = model.sample(1, n_atoms=6, seed=1, steps=4)[0].positions
    assert np.abs(a - c).max() < 0.5 * np.abs(b4 - c4).max()


def test_unknown_solver_or_trace_is_rejected(qm9) -> None:
    with pytest.raises(MolgenError, match="family.solver"):
        _model(qm9, family={"solver": "rk45"})
    with pytest.raises(MolgenError, match="likelihood_trace"):
        _model(qm9, family={"likelihood_trace": "skilling"})
