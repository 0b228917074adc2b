#!/usr/bin/env python
"""Training and sampling throughput of molgen's diffusion and flow matching beside an EDM-size EGNN.

    python scripts/bench_gpu.py [--device auto|cpu|cuda] [--preset default|demo|tiny]
        [--batch-size 64] [--iters 20] [--warmup 3] [--sample-n 1000] [--sample-steps 100]
        [--egnn-layers 9] [--egnn-hidden 256] [--no-amp] [--compile] [--json OUT]

Every case trains on the same real QM9 batches (EDM's training split, shuffled with a fixed seed,
collated once and moved to the device before timing: data stays on the device), and reports

* training throughput: molecules per second of one full optimizer step (forward, backward, gradient
  clipping, AdamW, EMA update), ``batch_size / median(seconds per step)`` after ``--warmup`` steps;
* sampling throughput: molecules per second of ``--sample-n`` molecules at ``--sample-steps``
  solver steps each (QM9's atom-count distribution, chunks of 500 molecules); a step is one network
  call for diffusion and the baseline, two for flow matching's default Heun solver;
* peak memory: ``torch.cuda.max_memory_allocated`` per phase on CUDA; not measured on the CPU.

molgen's families run exactly as ``molgen train`` runs them (the family's ``loss``, bf16 autocast
on CUDA unless ``--no-amp``, backbone layers compiled with ``--compile`` as ``train.compile=true``
does; the warm-up steps absorb the compilation) and as ``molgen generate`` samples (``model.sample`` in fp32, which also
builds the output molecules).
The baseline is written here: the E(n)-equivariant GNN of Satorras et al. (ICML 2021) at the size
EDM (Hoogeboom et al., ICML 2022) uses on QM9 — 9 layers of 256 features, fully connected, edge MLP
with attention, coordinate update ``x_i += Σ_j (x_i - x_j)/(|x_i - x_j| + 1) · tanh(φ_x(m_ij)) · 15``,
sum aggregation — trained with EDM's noise-prediction loss on positions and scaled one-hot types,
sampled with the ancestral update of the same VP process. It runs in fp32 as EDM does, or under the
same autocast as molgen with ``--baseline-amp``.

The ratio rows compare each family with the baseline on the same batches. Quality at equal
throughput is a separate question: ``molgen evaluate`` answers it for trained runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from molgen.config import resolve_config  # noqa: E402
from molgen.data.graphs import compute_stats, make_graphs, select_indices  # noqa: E402
from molgen.data.qm9 import load_qm9  # noqa: E402
from molgen.ema import EMA  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.models.registry import get_family  # noqa: E402
from molgen.nn.backbone import compile_backbones  # noqa: E402
from egnn_baseline import EGNN, NUM_TYPES, egnn_loss, egnn_sample  # noqa: E402

FAMILIES = ("diffusion", "flow-matching")


# ----------------------------------------------------------------------------- timing


@dataclass
class Row:
    model: str
    params: int
    train_mol_s: float
    train_peak_mib: float | None
    sample_mol_s: float
    sample_peak_mib: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_training(model: nn.Module, loss_fn, batches: list, warmup: int, device: torch.device, autocast) -> float:
    """Median seconds of one optimizer step (as in molgen.train) over the batches after ``warmup``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)
    ema = EMA(model, 0.999)
    times = []
    model.train()
    for i, batch in enumerate(batches):
        _sync(device)
        start = time.perf_counter()
        with autocast():
            loss = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        ema.update(model)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_sampling(sample_chunk, counts: Tensor, chunk: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(counts), chunk):
        sample_chunk(counts[i : i + chunk])
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="default", help="default (the GPU-scale configs), demo or tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample-n", type=int, default=1000)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--sample-chunk", type=int, default=500)
    parser.add_argument("--egnn-layers", type=int, default=9)
    parser.add_argument("--egnn-hidden", type=int, default=256)
    parser.add_argument("--no-amp", action="store_true", help="no bf16 autocast for molgen's families on CUDA")
    parser.add_argument("--baseline-amp", action="store_true", help="bf16 autocast for the EGNN too")
    parser.add_argument("--compile", action="store_true", help="train.compile=true for molgen's families")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    preset = None if args.preset == "default" else args.preset
    data = load_qm9()

    def autocast_for(enabled: bool):
        if enabled and device.type == "cuda":
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext

    # the batches and sampling atom counts every case shares (the families' data section is common)
    from torch_geometric.loader import DataLoader

    data_cfg = resolve_config("diffusion", get_family("diffusion").config_cls, preset=preset).data
    idx = select_indices(data, **data_cfg.selection())["train"]
    stats = compute_stats(data, idx, data_cfg.properties)
    order = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(args.seed))]
    graphs = make_graphs(data, order[: (args.warmup + args.iters) * args.batch_size], stats)
    batches = [b.to(device) for b in DataLoader(graphs, batch_size=args.batch_size)]
    counts = stats.sample_n_atoms(args.sample_n, torch.Generator().manual_seed(args.seed))

    def measure(label: str, net: nn.Module, loss_fn, sampler, net_for_sampling: nn.Module, autocast) -> Row:
        _reset_peak(device)
        train_s = time_training(net, loss_fn, batches, args.warmup, device, autocast)
        train_peak = _peak_mib(device)
        net_for_sampling.eval()
        _reset_peak(device)
        sample_s = time_sampling(sampler, counts, args.sample_chunk, device)
        print(f"done: {label}", file=sys.stderr)
        return Row(label, sum(p.numel() for p in net.parameters()), args.batch_size / train_s, train_peak,
                   args.sample_n / sample_s, _peak_mib(device))

    rows: list[Row] = []
    for name in FAMILIES:
        family = get_family(name)
        cfg = resolve_config(name, family.config_cls, preset=preset)
        torch.manual_seed(args.seed)
        model = family(cfg, stats).to(device)
        if args.compile:
            compile_backbones(model)
        # sampling in fp32 and eager, as `molgen generate` samples
        sampling_model = family(cfg, stats).to(device) if args.compile else model
        label = (f"molgen {name} ({cfg.backbone.num_layers} layers, {cfg.backbone.scalar_dim}+"
                 f"{cfg.backbone.vector_dim}x3{', compiled' if args.compile else ''})")
        rows.append(measure(
            label, model, lambda b, m=model: m.loss(b)["loss"],
            lambda c, m=sampling_model: m.sample(len(c), n_atoms=c.tolist(), steps=args.sample_steps,
                                                 seed=args.seed, batch_size=args.sample_chunk),
            sampling_model, autocast_for(cfg.train.amp and not args.no_amp)))
    torch.manual_seed(args.seed)
    egnn = EGNN(NUM_TYPES, args.egnn_hidden, args.egnn_layers).to(device)
    autocast = autocast_for(args.baseline_amp)
    rows.append(measure(
        f"EGNN baseline ({args.egnn_layers} layers, {args.egnn_hidden} features)", egnn,
        lambda b: egnn_loss(egnn, b), lambda c: egnn_sample(egnn, c, args.sample_steps, device, autocast),
        egnn, autocast))

    def mib(v: float | None) -> str:
        return "—" if v is None else f"{v:,.0f}"

    print(f"command: `python {' '.join(sys.argv)}`")
    print(f"machine: {describe_machine()}; torch {torch.__version__}; batch {args.batch_size} molecules, "
          f"{args.iters} timed steps; sampling {args.sample_n} molecules x {args.sample_steps} steps\n")
    print("| model | params | train mol/s | train peak MiB | sample mol/s | sample peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.model} | {r.params:,} | {r.train_mol_s:,.1f} | {mib(r.train_peak_mib)} | "
              f"{r.sample_mol_s:,.2f} | {mib(r.sample_peak_mib)} |")
    base = rows[-1]
    for r in rows[:-1]:
        print(f"\n{r.model}: training {r.train_mol_s / base.train_mol_s:.2f}x, sampling "
              f"{r.sample_mol_s / base.sample_mol_s:.2f}x the baseline's throughput; 10,000 molecules at "
              f"{args.sample_steps} steps in about {10_000 / r.sample_mol_s:,.0f} s")
    if args.json:
        from molgen.io_utils import atomic_open

        with atomic_open(args.json, "w") as fh:
            json.dump({"argv": sys.argv, "machine": describe_machine(), "rows": [asdict(r) for r in rows]}, fh, indent=2)


if __name__ == "__main__":
    main()
