"""Training the property oracle on QM9 ``Da`` in resumable chunks (``scripts/train_oracle.py``).

EDM's protocol: the property regressors are trained on ``Da`` (the first half of the QM9 training
split), early-stopped on the validation split, and their MAE on ``Db`` is the conditional table's
lower-bound row. molgen trains one multi-task regressor of the six protocol properties
(:class:`molgen.oracle.PropertyOracle`) with an L1 loss on targets standardized by ``Da``'s mean and
standard deviation; the weights with the best validation MAE (mean over properties of MAE / std)
are kept. ``loss_weights="edm"`` weights property p by ``std_p / EDM_p`` (mean weight 1; ``EDM_p``
is EDM's classifier MAE on ``Db``), so the loss and the selection score are the mean over
properties of the error *relative to EDM's*, the campaign's figure of merit; it may be switched
on resume (a branch of the campaign: the best weights are re-scored under the new criterion).

Resumable: the whole state — weights, AdamW moments, step, epoch and position in the epoch, the
best weights so far, the learning curve, the command history — is one file (tensors and plain
data, integrity-checked, read with ``weights_only``). The batch order is a function of
``(seed, epoch)``, and the learning rate (linear warm-up, cosine over ``total_steps``) a function of
the step, so chunks ``--minutes A`` then ``--resume`` ``--minutes B`` follow the same trajectory as
one run (up to floating-point reduction order across thread counts).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from molgen.config import BackboneConfig, from_dict
from molgen.errors import MolgenError
from molgen.io_utils import atomic_torch_save
from molgen.oracle import ORACLE_PROPERTIES, PropertyOracle
from molgen.safe_load import safe_torch_load, with_integrity

STATE_FORMAT = "molgen-oracle-training"
#: Display units of each property (``factor`` multiplies molgen's user units: eV -> meV).
DISPLAY = {"alpha": ("Bohr^3", 1.0), "gap": ("meV", 1000.0), "homo": ("meV", 1000.0),
           "lumo": ("meV", 1000.0), "mu": ("D", 1.0), "Cv": ("cal/mol/K", 1.0)}
#: EDM's classifier MAE on Db (Hoogeboom et al. 2022, Table 3 "QM9 (lower-bound)"), user units.
EDM_LOWER_BOUND = {"alpha": 0.10, "gap": 0.064, "homo": 0.039, "lumo": 0.036, "mu": 0.043, "Cv": 0.040}
#: Per-property weightings of the loss and the validation score (see the module doc).
LOSS_WEIGHTS = ("std", "edm")


def property_weights(loss_weights: str, std: torch.Tensor) -> torch.Tensor:
    """``[P]`` weights of the standardized per-property errors (mean 1): ones for ``"std"``,
    ``std_p / EDM_p`` normalized for ``"edm"``."""
    if loss_weights == "std":
        return torch.ones_like(std)
    w = std / torch.tensor([EDM_LOWER_BOUND[p] for p in ORACLE_PROPERTIES], dtype=std.dtype, device=std.device)
    return w / w.mean()


def valid_score(loss_weights: str, mae: torch.Tensor, std: torch.Tensor) -> float:
    """The selection score of a ``[P]`` user-unit MAE: the mean weighted standardized error."""
    std = std.cpu()
    return float((property_weights(loss_weights, std) * mae / std).mean())


@dataclass
class OracleTrainConfig:
    """Architecture and optimization of one oracle campaign (fixed when it starts, saved in its state)."""

    layers: int = 4
    scalar_dim: int = 64
    vector_dim: int = 16
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 200
    total_steps: int = 100_000  # the cosine schedule's length (the campaign's planned steps)
    val_every: int = 500
    valid_n: int = 2000
    clip: float = 10.0
    seed: int = 0
    max_train: int | None = None  # cap on Da molecules (smoke runs and tests)
    loss_weights: str = "std"  # "std": equal weights on standardized targets; "edm": relative to EDM's MAE

    def __post_init__(self) -> None:
        if self.loss_weights not in LOSS_WEIGHTS:
            raise MolgenError(f"loss_weights must be one of {', '.join(LOSS_WEIGHTS)}, got {self.loss_weights!r}")

    def backbone(self) -> BackboneConfig:
        return BackboneConfig(num_layers=self.layers, scalar_dim=self.scalar_dim, vector_dim=self.vector_dim,
                              edge_dim=32, graph_dim=self.scalar_dim, cond_dim=32, num_rbf=32, rbf_max=10.0)


@dataclass
class TrainingState:
    """Everything a chunk needs to continue exactly where the last one stopped."""

    config: OracleTrainConfig
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    step: int = 0
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches done in the epoch in progress (epoch + 1)
    train_seconds: float = 0.0
    best_score: float = math.inf
    best_model: dict[str, torch.Tensor] | None = None
    #: one row per validation: {"step", "epoch", "hours", "valid_score", "valid_mae": {prop: user units}}
    history: list[dict[str, Any]] = field(default_factory=list)
    #: one row per Db evaluation (end of a chunk): {"step", "epochs", "hours", "mae_db": {prop: user units}}
    db_history: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)
    #: why the last chunk ended: "budget", "total_steps", "SIGTERM", "SIGINT" (not saved)
    stopped_by: str | None = None

    def save(self, path: str | Path) -> Path:
        payload = {"format": STATE_FORMAT, **asdict(self), "config": asdict(self.config)}
        payload.pop("stopped_by")
        if payload["best_model"] is None:
            payload["best_model"] = {}
        atomic_torch_save(with_integrity(payload, ("model", "best_model")), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TrainingState:
        payload = safe_torch_load(path, "oracle training state")
        if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
            raise MolgenError(f"not an oracle training state: {path}")
        payload = {k: v for k, v in payload.items() if k not in ("format", "integrity")}
        payload["config"] = from_dict(OracleTrainConfig, payload["config"], "config.")
        payload["best_model"] = payload.get("best_model") or None
        return cls(**payload)


class OracleData:
    """``Da`` (training), the validation subset and ``Db`` of QM9 as graphs, with ``Da``'s statistics."""

    def __init__(self, cfg: OracleTrainConfig, data=None, max_db: int | None = None) -> None:
        from molgen.data.graphs import compute_stats, make_graphs
        from molgen.data.qm9 import edm_splits, load_qm9

        self.data = data if data is not None else load_qm9()
        splits = edm_splits(self.data.num_molecules)
        da = splits["da"][: cfg.max_train] if cfg.max_train else splits["da"]
        valid = splits["valid"][torch.randperm(len(splits["valid"]), generator=torch.Generator().manual_seed(1))]
        self.stats = compute_stats(self.data, da, ORACLE_PROPERTIES)
        self.train = make_graphs(self.data, da, self.stats)
        self.valid = make_graphs(self.data, valid[: cfg.valid_n], self.stats)
        self.db_rows = splits["db"][:max_db] if max_db else splits["db"]

    def db(self) -> list:
        from molgen.data.graphs import make_graphs

        return make_graphs(self.data, self.db_rows, self.stats)


def _batches(graphs: list, batch_size: int):
    from torch_geometric.data import Batch

    for i in range(0, len(graphs), batch_size):
        yield Batch.from_data_list(graphs[i : i + batch_size])


@torch.no_grad()
def mean_abs_error(model: PropertyOracle, graphs: list, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """``[P]`` MAE in user units of ``model`` on ``graphs`` (their ``y`` standardized by the model's stats)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros(len(model.properties)), 0
    for b in _batches(graphs, batch_size):
        b = b.to(device)
        pred = model(b.atom_types, b.pos, b.batch, b.num_graphs)
        total += (pred - model.std * b.y.view(b.num_graphs, -1) - model.mean).abs().sum(0).cpu()
        count += b.num_graphs
    model.train(was_training)
    return total / max(count, 1)


def learning_rate(cfg: OracleTrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to 0 at ``total_steps``."""
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    return cfg.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(step, cfg.total_steps) / cfg.total_steps))


def epoch_order(cfg: OracleTrainConfig, epoch: int, n: int) -> torch.Tensor:
    """The batch order of ``epoch`` (1-based): a permutation seeded by ``(seed, epoch)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))


def new_state(cfg: OracleTrainConfig, data: OracleData) -> TrainingState:
    torch.manual_seed(cfg.seed)
    model = PropertyOracle(cfg.backbone(), ORACLE_PROPERTIES, data.stats.mean, data.stats.std)
    return TrainingState(cfg, {k: v.detach().clone() for k, v in model.state_dict().items()})


def build(state: TrainingState, data: OracleData, device: torch.device):
    """The model and optimizer of ``state`` (on ``device``)."""
    cfg = state.config
    model = PropertyOracle(cfg.backbone(), ORACLE_PROPERTIES, data.stats.mean, data.stats.std)
    model.load_state_dict(state.model)
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    if state.optimizer is not None:
        opt.load_state_dict(state.optimizer)
    return model, opt


def train_chunk(state: TrainingState, data: OracleData, *, minutes: float, device: torch.device,
                log: Callable[[str], None] = print, max_steps: int | None = None) -> TrainingState:
    """Train from ``state`` for ``minutes`` of wall clock (or ``max_steps`` more steps, or until
    SIGTERM / SIGINT, or ``total_steps``), then return the updated state (not yet saved)."""
    cfg = state.config
    model, opt = build(state, data, device)
    weights = property_weights(cfg.loss_weights, model.std)
    stop = {"signal": None}
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):  # finish the current step, then save
        stop["signal"] = signum

    for s in previous:
        signal.signal(s, handler)
    start, steps_done = time.perf_counter(), 0
    base_seconds = state.train_seconds
    n = len(data.train)
    per_epoch = math.ceil(n / cfg.batch_size)
    from torch_geometric.data import Batch

    try:
        while stop["signal"] is None and state.step < cfg.total_steps:
            order = epoch_order(cfg, state.epoch + 1, n)  # the epoch in progress
            while state.batch_in_epoch < per_epoch:
                elapsed = time.perf_counter() - start
                if elapsed >= minutes * 60.0 or (max_steps is not None and steps_done >= max_steps):
                    stop["signal"] = "budget"
                if stop["signal"] is not None or state.step >= cfg.total_steps:
                    break
                k = state.batch_in_epoch
                rows = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                b = Batch.from_data_list([data.train[int(i)] for i in rows]).to(device)
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, state.step)
                pred = model.forward_normalized(b.atom_types, b.pos, b.batch, b.num_graphs)
                loss = ((pred - b.y.view(b.num_graphs, -1)).abs() * weights).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                opt.step()
                state.step += 1
                state.batch_in_epoch += 1
                steps_done += 1
                state.train_seconds = base_seconds + (time.perf_counter() - start)
                if state.step % cfg.val_every == 0:
                    _validate(state, model, data, device, float(loss.detach()), log)
            if state.batch_in_epoch >= per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    state.model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state.optimizer = opt.state_dict()
    state.stopped_by = "total_steps" if stop["signal"] is None else (
        "budget" if stop["signal"] == "budget" else signal.Signals(stop["signal"]).name)
    return state


def _validate(state: TrainingState, model: PropertyOracle, data: OracleData, device, loss: float, log) -> None:
    mae = mean_abs_error(model, data.valid, device)
    score = valid_score(state.config.loss_weights, mae, model.std)
    if score < state.best_score:
        state.best_score = score
        state.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    epochs = state.step * state.config.batch_size / len(data.train)
    state.history.append({"step": state.step, "epochs": round(epochs, 3), "hours": round(state.train_seconds / 3600, 4),
                          "valid_score": score, "criterion": state.config.loss_weights,
                          "valid_mae": dict(zip(ORACLE_PROPERTIES, map(float, mae)))})
    log(f"step {state.step} epoch {epochs:.2f} {state.train_seconds / 3600:.2f} h loss {loss:.4f} "
        f"valid score ({state.config.loss_weights}) {score:.4f} (best {state.best_score:.4f})")


def switch_loss_weights(state: TrainingState, data: OracleData, loss_weights: str, device: torch.device) -> None:
    """Branch the campaign to another ``loss_weights``: its best weights are re-scored on the
    validation set under the new criterion (so later validations compare like with like)."""
    if loss_weights == state.config.loss_weights:
        return
    state.config = replace(state.config, loss_weights=loss_weights)
    if state.best_model is not None:
        best = best_oracle(state, data).to(device)
        state.best_score = valid_score(loss_weights, mean_abs_error(best, data.valid, device), best.std)
    else:
        state.best_score = math.inf


def best_oracle(state: TrainingState, data: OracleData) -> PropertyOracle:
    """The oracle with the best validation weights (the current ones before any validation)."""
    cfg = state.config
    model = PropertyOracle(cfg.backbone(), ORACLE_PROPERTIES, data.stats.mean, data.stats.std)
    model.load_state_dict(state.best_model or state.model)
    return model.eval()


def mae_display(mae_user: dict[str, float]) -> dict[str, float]:
    """User-unit MAE -> the README's units (gap / homo / lumo in meV)."""
    return {p: float(mae_user[p]) * DISPLAY[p][1] for p in ORACLE_PROPERTIES}


def mae_table(mae_user: dict[str, float]) -> str:
    """Markdown: the MAE per property beside EDM's classifier."""
    lines = ["| property | unit | molgen oracle MAE on Db | EDM classifier | ratio |", "|---|---|---:|---:|---:|"]
    for p in ORACLE_PROPERTIES:
        unit, f = DISPLAY[p]
        ours, edm = mae_user[p] * f, EDM_LOWER_BOUND[p] * f
        lines.append(f"| {p} | {unit} | {ours:.4g} | {edm:.4g} | {ours / edm:.2f}x |")
    return "\n".join(lines)
