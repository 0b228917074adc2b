#!/usr/bin/env python
"""How fast 3D generators learn: contenders trained side by side on the same QM9 batches, equal time each.

    python scripts/bench_learning.py [--minutes 20] [--fractions 0.125,0.25,0.5,1] [--samples 500]
        [--contenders diffusion,flow-matching,fm-data,fm-cat,egnn-matched,egnn-edm] [--nfe 100]
        [--threads 2] [--batch-size 64] [--lr 1e-3] [--warmup 100] [--ema 0.999] [--seed 0]
        [--out outputs/bench_learning] [--tracking-uri URI]

Every contender trains on the full QM9 training split (EDM's split) in the **same batch order**
(one seeded shuffle; contender k's i-th step sees batch i) with the same optimizer (AdamW with
amsgrad, ``--lr`` after ``--warmup`` linear steps, gradient clipping 2.0, EMA ``--ema``) and the
same budget of ``--minutes`` of its own training time. The contenders are **interleaved**: the next
step always goes to the contender with the least training time so far, so a change of machine load
hits all of them alike (ratios in one run hold; absolute minutes depend on the machine). Batches are
collated outside the timed section; only the optimizer step (forward, backward, clipping, AdamW, EMA)
is timed. When a contender's training time crosses a fraction of the budget, its EMA weights sample
``--samples`` molecules (the same atom counts for everyone, drawn from the training histogram) with
``--nfe`` network evaluations per molecule (diffusion and the EGNN: that many ancestral steps; Heun
flow matching: half as many steps; Euler variants: that many steps), not timed, and the molecules are
scored with molgen's metrics on the raw EDM protocol (bonds from distances, no post-processing):
atom and molecule stability, validity, V x U.

Contenders (``--contenders``): molgen's ``diffusion`` and ``flow-matching`` as the demo preset
configures them, flow-matching variants (``fm-data``: data prediction and training times from
Beta(2, 1); ``fm-cat``: the same with atom types and charges as categorical variables, see
:mod:`molgen.models.flow_matching`), and the EDM-architecture EGNN of ``scripts/egnn_baseline.py`` at
EDM's size (``egnn-edm``: 9 layers x 256) and at the parameter count of molgen's demo backbone
(``egnn-matched``: 9 layers, width chosen to match). Output under ``--out``: ``table.md`` (also
printed), ``results.json``, ``stability.png`` (stability vs minutes), logged as one MLflow run
(experiment ``molgen-bench``). The figure of merit is a ratio in the same run: the best molgen
contender's molecule stability over the EGNN's, at every fraction.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from egnn_baseline import EGNN, NUM_TYPES, egnn_loss, egnn_sample  # noqa: E402
from molgen.chem.elements import Molecule3D  # noqa: E402
from molgen.config import resolve_config  # noqa: E402
from molgen.data.canonical import canonical_qm9_smiles  # noqa: E402
from molgen.data.graphs import compute_stats, make_graphs, select_indices  # noqa: E402
from molgen.data.qm9 import load_qm9  # noqa: E402
from molgen.ema import EMA  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.metrics.basic import basic_metrics  # noqa: E402
from molgen.models.registry import get_family  # noqa: E402

#: molgen contenders: (family, family-config overrides on the demo preset, network calls per step)
MOLGEN: dict[str, tuple[str, dict[str, Any], int]] = {
    "diffusion": ("diffusion", {}, 1),
    "flow-matching": ("flow-matching", {}, 2),  # Heun
    "fm-data": ("flow-matching", {"prediction": "data", "solver": "euler", "time_alpha": 2.0}, 1),
    "fm-cat": ("flow-matching", {"prediction": "data", "solver": "euler", "time_alpha": 2.0,
                                 "atom_types": "categorical"}, 1),
}
EGNNS = ("egnn-matched", "egnn-edm")
SCORES = ("atom_stability", "mol_stability", "validity", "valid_unique")


@dataclass
class Contender:
    """One model in the race: its training step, its sampler, its clock and its results."""

    name: str
    model: nn.Module
    loss: Callable[[nn.Module, Any], torch.Tensor]
    sample: Callable[[nn.Module, torch.Tensor], list[Molecule3D]]
    optimizer: torch.optim.Optimizer
    ema: EMA
    batches: Any
    params: int
    seconds: float = 0.0
    steps: int = 0
    evals: list[dict[str, float]] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0, help="training budget of each contender")
    p.add_argument("--fractions", default="0.125,0.25,0.5,1", help="budget fractions at which to sample")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--contenders", default=",".join([*MOLGEN, *EGNNS]))
    p.add_argument("--nfe", type=int, default=100, help="network evaluations per sampled molecule")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-molecules", type=int, default=None, help="train on the first M molecules (smoke runs)")
    p.add_argument("--out", default="outputs/bench_learning")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args()
    unknown = [c for c in args.contenders.split(",") if c not in MOLGEN and c not in EGNNS]
    if unknown:
        p.error(f"unknown contender(s) {', '.join(unknown)} (choose from: {', '.join([*MOLGEN, *EGNNS])})")
    return args


def to_molecules(x: torch.Tensor, types: torch.Tensor, counts: torch.Tensor) -> list[Molecule3D]:
    """EGNN samples -> molecules (no charges: the baseline does not generate them)."""
    x, types = x.detach().cpu().double().numpy(), types.cpu().numpy()
    out, start = [], 0
    for n in counts.tolist():
        out.append(Molecule3D(atom_types=types[start:start + n], positions=x[start:start + n],
                              charges=types[start:start + n] * 0))
        start += n
    return out


def batch_stream(graphs: list, batch_size: int, seed: int):
    """The shared batch order: one seeded shuffle per epoch, identical for every contender."""
    from torch_geometric.loader import DataLoader

    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed + epoch)
        yield from DataLoader(graphs, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen)
        epoch += 1


def build(name: str, args: argparse.Namespace, stats: Any, graphs: list, target_params: int) -> Contender:
    torch.manual_seed(args.seed)
    sample_gen_seed = args.seed + 1
    if name in MOLGEN:
        family_name, overrides, calls = MOLGEN[name]
        family = get_family(family_name)
        cfg = resolve_config(family_name, family.config_cls, preset="demo", overrides={"family": overrides})
        model = family(cfg, stats)
        steps = max(1, args.nfe // calls)

        def loss(m: nn.Module, b: Any) -> torch.Tensor:
            return m.loss(b)["loss"]

        def sample(m: nn.Module, counts: torch.Tensor) -> list[Molecule3D]:
            return m.sample(len(counts), n_atoms=counts.tolist(), steps=steps, seed=sample_gen_seed,
                            batch_size=250)
    else:
        hidden = 256
        if name == "egnn-matched":  # the width whose parameter count is closest to molgen's backbone
            hidden = min(range(8, 257, 4),
                         key=lambda w: abs(sum(p.numel() for p in EGNN(NUM_TYPES, w, 9).parameters()) - target_params))
        model = EGNN(NUM_TYPES, hidden, 9)

        def loss(m: nn.Module, b: Any) -> torch.Tensor:
            return egnn_loss(m, b)

        def sample(m: nn.Module, counts: torch.Tensor) -> list[Molecule3D]:
            gen = torch.Generator().manual_seed(sample_gen_seed)
            mols = []
            for i in range(0, len(counts), 250):
                c = counts[i:i + 250]
                x, types = egnn_sample(m, c, args.nfe, torch.device("cpu"), torch.no_grad, gen)
                mols += to_molecules(x, types, c)
            return mols
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-12, amsgrad=True)
    return Contender(name, model, loss, sample, opt, EMA(model, args.ema),
                     batch_stream(graphs, args.batch_size, args.seed), sum(p.numel() for p in model.parameters()))


def train_step(c: Contender, args: argparse.Namespace) -> None:
    batch = next(c.batches)  # collated outside the timed section
    start = time.perf_counter()
    c.model.train()
    for group in c.optimizer.param_groups:
        group["lr"] = args.lr * min(1.0, (c.steps + 1) / max(1, args.warmup))
    loss = c.loss(c.model, batch)
    c.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(c.model.parameters(), 2.0)
    c.optimizer.step()
    c.ema.update(c.model)
    c.seconds += time.perf_counter() - start
    c.steps += 1
    if not math.isfinite(float(loss)):
        print(f"warning: {c.name} loss is {float(loss)} at step {c.steps}", file=sys.stderr)


@torch.no_grad()
def evaluate(c: Contender, counts: torch.Tensor, fraction: float, train_smiles: set[str]) -> dict[str, float]:
    start = time.perf_counter()
    mols = c.sample(c.ema.shadow, counts)
    m = basic_metrics(mols, train_smiles=train_smiles)
    row = {"fraction": fraction, "minutes": c.seconds / 60, "steps": c.steps,
           **{k: float(m[k]) for k in SCORES}, "sample_seconds": time.perf_counter() - start}
    c.evals.append(row)
    print(f"{c.name:>14} {row['minutes']:6.1f} min {c.steps:6d} steps: atom {row['atom_stability']:.3f} "
          f"mol {row['mol_stability']:.3f} valid {row['validity']:.3f} VxU {row['valid_unique']:.3f} "
          f"(sampled in {row['sample_seconds']:.0f} s)", flush=True)
    return row


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else ("—" if a == 0 else "∞ (EGNN 0)")


def report(contenders: list[Contender], fractions: list[float], args: argparse.Namespace) -> str:
    lines = [f"command: `python {' '.join(sys.argv)}`",
             f"machine: {describe_machine()}; torch {torch.__version__}, {args.threads} threads; "
             f"{args.samples} samples per point, {args.nfe} network evaluations per molecule; raw EDM rules", "",
             "| contender | params | minutes | steps | atom stab. | mol stab. | valid | V×U |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in contenders:
        for r in c.evals:
            lines.append(f"| {c.name} | {c.params:,} | {r['minutes']:.1f} | {r['steps']:,} | "
                         f"{100 * r['atom_stability']:.1f} % | {100 * r['mol_stability']:.1f} % | "
                         f"{100 * r['validity']:.1f} % | {100 * r['valid_unique']:.1f} % |")
    mine = [c for c in contenders if c.name in MOLGEN]
    for base in [c for c in contenders if c.name in EGNNS]:
        if not mine:
            break
        lines.append("")
        lines.append(f"best molgen contender over {base.name} (molecule stability; atom stability), same run:")
        for i, f in enumerate(fractions):
            if i >= len(base.evals) or any(i >= len(c.evals) for c in mine):
                continue
            best = max(mine, key=lambda c: (c.evals[i]["mol_stability"], c.evals[i]["atom_stability"]))
            b, r = base.evals[i], best.evals[i]
            lines.append(f"- {f:g} of the budget: {best.name} {ratio(r['mol_stability'], b['mol_stability'])}; "
                         f"{ratio(r['atom_stability'], b['atom_stability'])}")
    return "\n".join(lines)


def plot(contenders: list[Contender], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    for j, key in enumerate(("atom_stability", "mol_stability")):
        ax = fig.add_subplot(1, 2, j + 1)
        for c in contenders:
            ax.plot([r["minutes"] for r in c.evals], [100 * r[key] for r in c.evals], marker="o", label=c.name)
        ax.set_xlabel("training minutes (each contender's own)")
        ax.set_ylabel(f"{key.replace('_', ' ')} (%)")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_qm9()
    data_cfg = resolve_config("diffusion", get_family("diffusion").config_cls, preset="demo").data
    idx = select_indices(data, **data_cfg.selection())["train"]
    if args.max_molecules:
        idx = idx[: args.max_molecules]
    stats = compute_stats(data, idx, [])
    graphs = make_graphs(data, idx, stats)
    canonical = canonical_qm9_smiles(data)
    train_smiles = {canonical[i] for i in idx.tolist()} - {None}
    counts = stats.sample_n_atoms(args.samples, torch.Generator().manual_seed(args.seed))
    target = sum(p.numel() for p in get_family("diffusion")(
        resolve_config("diffusion", get_family("diffusion").config_cls, preset="demo"), stats).parameters())
    contenders = [build(n, args, stats, graphs, target) for n in args.contenders.split(",")]
    for c in contenders:
        print(f"{c.name}: {c.params:,} parameters", flush=True)
    budget = args.minutes * 60
    pending = {c.name: list(fractions) for c in contenders}
    while any(pending.values()):
        c = min((c for c in contenders if pending[c.name]), key=lambda c: c.seconds)
        train_step(c, args)
        if c.seconds >= pending[c.name][0] * budget:
            evaluate(c, counts, pending[c.name].pop(0), train_smiles)
    table = report(contenders, fractions, args)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(
        {"argv": sys.argv, "machine": describe_machine(), "contenders": [
            {"name": c.name, "params": c.params, "evals": c.evals} for c in contenders]}, indent=2))
    plot(contenders, out / "stability.png")
    if not args.no_mlflow:
        from molgen.tracking import Tracker

        with Tracker(args.tracking_uri, "molgen-bench", run_name="bench_learning",
                     tags={"molgen.kind": "bench_learning"}) as tracker:
            tracker.log_params({k: v for k, v in vars(args).items() if v is not None})
            for c in contenders:
                for i, r in enumerate(c.evals):
                    tracker.log_metrics({f"{c.name}/{k}": r[k] for k in (*SCORES, "minutes")}, step=i)
            for name in ("table.md", "results.json", "stability.png"):
                tracker.log_artifact(out / name)
            print(f"MLflow run {tracker.run_id}")


if __name__ == "__main__":
    main()
