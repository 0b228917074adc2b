"""Benchmark the shared E(3)-equivariant backbone on real QM9 batches.

For the default :class:`~molgen.config.BackboneConfig` and the ``demo`` preset's ``backbone:``
section, measures training-style forward+backward throughput, forward-only (``no_grad``)
throughput, the parameter count and peak memory, on the CPU and, when available, on CUDA (fp32
and, optionally, bf16 autocast). Prints a Markdown table; ``--json`` also writes the numbers.

Usage::

    python scripts/bench_backbone.py [--batch-size 128] [--iters 10] [--warmup 2]
        [--device auto|cpu|cuda] [--threads N] [--no-bf16] [--seed 0] [--cache-dir DIR] [--json OUT]

``--device auto`` (the default) measures the CPU and, if ``torch.cuda.is_available()``, CUDA too.
The default invocation (CPU only) takes about one minute on an idle 2-core machine.

What is measured:

* Data: the EDM training split, shuffled with a fixed seed; the first ``warmup + iters`` batches
  of ``--batch-size`` molecules, built with :func:`~molgen.data.graphs.make_graphs` and collated by
  ``torch_geometric.loader.DataLoader`` once, in the main process, then moved to the device before
  any timing (loading and collation are not timed). Iteration ``k`` of every mode uses batch ``k``,
  so all cases and modes see the same molecules.
* Inputs: node features = one-hot atom types (5) + the formal charge (1 channel); a random
  ``[B, cond_dim]`` condition; the backbone builds its own (fully connected) edge index, which is
  part of the timed work.
* forward+backward: ``loss = scalars.sum() + vectors.sum() + graph.sum()`` (the outputs the families
  use; the opt-in per-edge features are not computed),
  ``loss.backward()``, gradients reset to ``None`` every iteration (no optimizer step).
* Throughput: ``batch_size / median(seconds per iteration)`` over the timed iterations, after the
  warm-up iterations; on CUDA the device is synchronized before and after each iteration.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
  (absolute: parameters, batches and activations). On the CPU the increase of the process peak
  resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) over its value just before the model is
  built. Every CPU case runs in a fresh (spawned) worker process that never loads the dataset (it
  receives the collated batches), so the high-water mark is its own; forward-only runs first, so
  each mode's peak can be read off the monotonic high-water mark.
* A case that raises (e.g. an op without bf16 support) is reported as a failed row; the others
  still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molgen.chem.elements import ELEMENTS
from molgen.config import BackboneConfig, configs_dir, from_dict, read_yaml
from molgen.data.graphs import compute_stats, make_graphs
from molgen.data.qm9 import edm_splits, load_qm9
from molgen.nn.backbone import EquivariantBackbone
from molgen.io_utils import atomic_write_text
from molgen.machine import cpu_name

#: Width of the node input: one-hot atom types + one formal-charge channel.
NODE_IN_DIM = len(ELEMENTS) + 1
MIB = 1024.0**2


# --------------------------------------------------------------------------- cases and results


@dataclass(frozen=True)
class Case:
    """One measured combination of backbone, device and precision."""

    name: str
    backbone: BackboneConfig
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32" or "bf16-autocast"


@dataclass(frozen=True)
class Options:
    """Settings shared by every case (picklable, sent to worker processes)."""

    batch_size: int
    iters: int
    warmup: int
    threads: int | None
    seed: int


@dataclass
class Result:
    """Measurements of one :class:`Case` (``error`` set and numbers ``None`` if it failed)."""

    backbone: str
    device: str
    precision: str
    iters: int
    warmup: int
    params: int | None = None
    train_ms: float | None = None  # median ms per forward+backward iteration
    train_mol_s: float | None = None
    infer_ms: float | None = None  # median ms per forward-only iteration
    infer_mol_s: float | None = None
    mem_metric: str | None = None  # what the memory numbers are
    train_peak_mib: float | None = None
    infer_peak_mib: float | None = None
    torch_threads: int | None = None
    error: str | None = None


def demo_backbone() -> BackboneConfig:
    """The ``backbone:`` section of ``configs/presets/demo.yaml`` over the dataclass defaults."""
    section = read_yaml(configs_dir() / "presets" / "demo.yaml").get("backbone", {})
    return from_dict(BackboneConfig, section, "backbone.")


# --------------------------------------------------------------------------- data


@dataclass
class InputBatch:
    """The tensors of one collated batch that the backbone needs (condition added per case)."""

    h: torch.Tensor  # [N, NODE_IN_DIM] one-hot atom types + formal charge
    pos: torch.Tensor  # [N, 3] Å
    batch: torch.Tensor  # [N] molecule index
    num_graphs: int
    cond: torch.Tensor | None = None  # [B, cond_dim]

    @property
    def num_edges(self) -> int:
        """Directed edges of the fully connected graph: sum over molecules of n (n - 1)."""
        n = torch.bincount(self.batch)
        return int((n * (n - 1)).sum())

    def to_case(self, device: torch.device, cond_dim: int, generator: torch.Generator) -> InputBatch:
        """A copy on ``device`` with a random ``[B, cond_dim]`` condition."""
        cond = torch.randn(self.num_graphs, cond_dim, generator=generator)
        return InputBatch(self.h.to(device), self.pos.to(device), self.batch.to(device), self.num_graphs,
                          cond.to(device))


def load_batches(batch_size: int, num_batches: int, seed: int, cache_dir: str | None) -> list[InputBatch]:
    """The first ``num_batches`` batches of a fixed-seed shuffle of the EDM training split (CPU)."""
    from torch_geometric.loader import DataLoader

    data = load_qm9(cache_dir)
    train = edm_splits(data.num_molecules)["train"]
    needed = num_batches * batch_size
    if needed > train.numel():
        raise SystemExit(f"need {needed} molecules but the training split has {train.numel()}")
    gen = torch.Generator().manual_seed(seed)
    chosen = train[torch.randperm(train.numel(), generator=gen)[:needed]]
    graphs = make_graphs(data, chosen, compute_stats(data, train, []))
    out = []
    for b in DataLoader(graphs, batch_size=batch_size, shuffle=False):
        onehot = torch.nn.functional.one_hot(b.atom_types, len(ELEMENTS)).float()
        h = torch.cat([onehot, b.charges.float()[:, None]], dim=-1)
        out.append(InputBatch(h, b.pos.clone(), b.batch.clone(), int(b.num_graphs)))
    return out


# --------------------------------------------------------------------------- measuring


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(
    step: Callable[[InputBatch], None], batches: list[InputBatch], warmup: int, iters: int, device: torch.device
) -> list[float]:
    """Run ``step`` on batches ``0 .. warmup + iters - 1``; return the timed seconds (after warm-up)."""
    times = []
    for k in range(warmup + iters):
        b = batches[k % len(batches)]
        _synchronize(device)
        start = time.perf_counter()
        step(b)
        _synchronize(device)
        if k >= warmup:
            times.append(time.perf_counter() - start)
    return times


def run_case(case: Case, opts: Options, cpu_batches: list[InputBatch]) -> Result:
    """Measure one case in the current process; a failure is returned as a :class:`Result` with ``error``."""
    try:
        return _measure_case(case, opts, cpu_batches)
    except Exception as exc:  # report and go on with the other cases
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return Result(case.name, case.device, case.precision, opts.iters, opts.warmup,
                      error=f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})")


def _measure_case(case: Case, opts: Options, cpu_batches: list[InputBatch]) -> Result:
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    device = torch.device(case.device)
    gen = torch.Generator().manual_seed(opts.seed)
    batches = [b.to_case(device, case.backbone.cond_dim, gen) for b in cpu_batches[: opts.warmup + opts.iters]]

    # memory baselines, taken after the data is loaded and before the model exists
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rss_before = peak_rss_bytes()

    torch.manual_seed(opts.seed)
    model = EquivariantBackbone(NODE_IN_DIM, case.backbone).to(device)
    params = sum(p.numel() for p in model.parameters())

    def autocast() -> AbstractContextManager[Any]:
        if case.precision == "bf16-autocast":
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return nullcontext()

    def forward(b: InputBatch) -> torch.Tensor:
        with autocast():
            out = model(b.h, b.pos, b.batch, b.cond, num_graphs=b.num_graphs)
            return (
                out.scalars.float().sum()
                + out.vectors.float().sum()
                + out.graph.float().sum()
            )

    def infer_step(b: InputBatch) -> None:
        with torch.no_grad():
            forward(b)

    def train_step(b: InputBatch) -> None:
        model.zero_grad(set_to_none=True)
        forward(b).backward()

    def measure(step: Callable[[InputBatch], None]) -> tuple[float, float]:
        """Median seconds per iteration and the peak memory (MiB) of ``step``."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = statistics.median(time_iterations(step, batches, opts.warmup, opts.iters, device))
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / MIB
        else:
            peak = (peak_rss_bytes() - rss_before) / MIB
        return seconds, peak

    # forward-only first: on the CPU the peak RSS only grows, so this order isolates both peaks
    model.eval()
    infer_s, infer_peak = measure(infer_step)
    model.train()
    train_s, train_peak = measure(train_step)

    return Result(
        backbone=case.name,
        device=case.device,
        precision=case.precision,
        iters=opts.iters,
        warmup=opts.warmup,
        params=params,
        train_ms=train_s * 1e3,
        train_mol_s=opts.batch_size / train_s,
        infer_ms=infer_s * 1e3,
        infer_mol_s=opts.batch_size / infer_s,
        mem_metric="CUDA max_memory_allocated" if device.type == "cuda" else "CPU peak RSS increase",
        train_peak_mib=train_peak,
        infer_peak_mib=infer_peak,
        torch_threads=torch.get_num_threads(),
    )


def run_case_isolated(case: Case, opts: Options, cpu_batches: list[InputBatch]) -> Result:
    """Run :func:`run_case` in a fresh spawned process, so its peak RSS is its own."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
            return pool.submit(run_case, case, opts, cpu_batches).result()
    except BrokenProcessPool as exc:  # the worker died (e.g. killed when out of memory)
        return Result(case.name, case.device, case.precision, opts.iters, opts.warmup,
                      error=f"worker process died: {exc}")


# --------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_name(),
        "arch": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def load_average() -> float | None:
    """1-minute system load average (other work on the machine skews CPU timings), if known."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def describe_data(batches: list[InputBatch], batch_size: int) -> dict[str, Any]:
    """Sizes of the benchmark batches (for the report header and the JSON)."""
    return {
        "source": "QM9, EDM train split, fixed-seed shuffle, first batches",
        "batch_size": batch_size,
        "num_batches": len(batches),
        "atoms_per_batch": [int(b.batch.numel()) for b in batches],
        "edges_per_batch": [b.num_edges for b in batches],
    }


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(command: str, date: str, machine: dict[str, Any], data: dict[str, Any],
                  opts: Options, results: list[Result]) -> str:
    """The Markdown report: a header (command, machine, date, data, method) and one row per case."""
    gpu = f", GPU {machine['gpu']}" if machine["gpu"] else ", no GPU"
    load = machine["load_avg_1min"]
    load_text = " -> ".join("?" if x is None else f"{x:.2f}" for x in (load["start"], load["end"]))
    lines = [
        f"command: `{command}`",
        f"machine: {machine['cpu_count']} CPUs, {machine['cpu']} ({machine['arch']}), {machine['platform']}, "
        f"Python {machine['python']}, torch {machine['torch']}, torch threads {machine['torch_threads']}{gpu}",
        f"date: {date}; 1-min load average at start -> end: {load_text} (on {machine['cpu_count']} CPUs)",
        f"data: {data['source']}: {data['num_batches']} batches of {data['batch_size']} molecules, "
        f"mean {statistics.mean(data['atoms_per_batch']):,.0f} atoms and "
        f"{statistics.mean(data['edges_per_batch']):,.0f} directed edges (fully connected) per batch; "
        f"node input = one-hot atom type (5) + formal charge (1); random condition vector",
    ]
    lines += [
        f"timing: {opts.warmup} warm-up + median of {opts.iters} timed iterations per mode; "
        "fwd+bwd loss = sum of all outputs, no optimizer step; data loading/collation not timed",
        "memory: cpu = increase of the process peak RSS (ru_maxrss) over its value before the model was built "
        "(fresh process per case); cuda = torch.cuda.max_memory_allocated (absolute)",
        "",
        "| backbone | device | precision | params | fwd+bwd mol/s | fwd+bwd ms/batch | fwd-only mol/s "
        "| fwd-only ms/batch | peak mem fwd+bwd (MiB) | peak mem fwd-only (MiB) | memory metric |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.error is not None:
            lines.append(f"| {r.backbone} | {r.device} | {r.precision} | FAILED: {r.error} "
                         "| - | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {r.backbone} | {r.device} | {r.precision} | {_fmt(r.params, ',')} | {_fmt(r.train_mol_s, ',.1f')} "
            f"| {_fmt(r.train_ms, ',.1f')} | {_fmt(r.infer_mol_s, ',.1f')} | {_fmt(r.infer_ms, ',.1f')} "
            f"| {_fmt(r.train_peak_mib, ',.0f')} | {_fmt(r.infer_peak_mib, ',.0f')} | {r.mem_metric} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128, help="molecules per batch (default 128)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per mode (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up iterations per mode (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto (default): CPU, plus CUDA when torch.cuda.is_available()")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the CUDA bf16-autocast rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle, weights and conditions (default 0)")
    parser.add_argument("--cache-dir", default=None,
                        help="QM9 cache folder (default $MOLGEN_CACHE or ~/.cache/molgen)")
    parser.add_argument("--json", metavar="OUT", default=None, help="also write the results as JSON to OUT")
    args = parser.parse_args(argv)
    for name in ("batch_size", "iters", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    return args


def build_cases(args: argparse.Namespace) -> Iterator[Case]:
    """Default and demo backbones on each selected device; bf16 autocast only on CUDA."""
    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")
    backbones = [("default", BackboneConfig()), ("demo", demo_backbone())]
    for device in devices:
        precisions = ["fp32"] + (["bf16-autocast"] if device == "cuda" and not args.no_bf16 else [])
        for name, cfg in backbones:
            for precision in precisions:
                yield Case(name, cfg, device, precision)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shown_args = sys.argv[1:] if argv is None else argv
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *shown_args])
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = machine_info()
    machine["load_avg_1min"] = {"start": load_average(), "end": None}

    cases = list(build_cases(args))
    opts = Options(args.batch_size, args.iters, args.warmup, args.threads, args.seed)
    batches = load_batches(args.batch_size, args.warmup + args.iters, args.seed, args.cache_dir)
    data = describe_data(batches, args.batch_size)

    results: list[Result] = []
    for case in cases:
        print(f"[bench] {case.name} backbone, {case.device}, {case.precision} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        if case.device == "cpu":
            result = run_case_isolated(case, opts, batches)
        else:
            result = run_case(case, opts, batches)
        status = f"FAILED: {result.error}" if result.error else "done"
        print(f"[bench]   {status} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        results.append(result)

    machine["load_avg_1min"]["end"] = load_average()
    print(format_report(command, date, machine, data, opts, results))
    if args.json:
        payload = {
            "command": command,
            "date": date,
            "machine": machine,
            "data": data,
            "settings": dataclasses.asdict(opts),
            "backbones": {c.name: dataclasses.asdict(c.backbone) for c in cases},
            "results": [dataclasses.asdict(r) for r in results],
        }
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
