#!/usr/bin/env python
"""Reproduce MOSES's published metrics for its published 30,000-SMILES sample files.

For each sample file (default: CharRNN and VAE, ``../shared/benchmarks/moses``) it runs
:func:`molgen.metrics.moses_suite.moses_metrics` and prints a Markdown table: metric, published,
molgen, difference, pass/fail. Tolerances: fractions (valid, unique, SNN, Frag, Scaf, IntDiv,
Filters, Novelty) within 0.005 absolute; FCD and the Wasserstein distances (logP, SA, QED,
weight) within 5% relative. Also prints wall time per file and stage, peak RSS, the command and
the machine. Exit status 1 if any metric fails.

Usage::

    python scripts/reproduce_moses.py                      # both files, n_jobs=2
    python scripts/reproduce_moses.py --recompute-reference  # reference stats from SMILES
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "benchmarks" / "moses"
SAMPLES = {"char_rnn_1": "CharRNN", "vae_1": "VAE"}
#: Metrics compared with a relative tolerance (distances); all others are fractions.
RELATIVE = ("FCD/Test", "FCD/TestSF", "logP", "SA", "QED", "weight")
ABS_TOL = 0.005
REL_TOL = 0.05


def read_smiles(path: Path) -> list[str]:
    """SMILES of a MOSES sample file (header ``SMILES``, one per line)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0] != ["SMILES"]:
        raise SystemExit(f"{path}: expected a SMILES header")
    return [r[0] if r else "" for r in rows[1:]]


def read_published(path: Path) -> dict[str, float]:
    """``metric,value`` rows (no header) of a MOSES metrics file."""
    with open(path, newline="") as fh:
        return {r[0]: float(r[1]) for r in csv.reader(fh) if r}


def compare(key: str, published: float, ours: float) -> tuple[str, bool]:
    """(difference as text, within tolerance)."""
    diff = abs(ours - published)
    if key in RELATIVE:
        rel = diff / abs(published) if published else float("inf")
        return f"{rel:.2%} rel", rel <= REL_TOL
    return f"{diff:.4f}", diff <= ABS_TOL


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def peak_rss_gib() -> tuple[float, float]:
    """Peak RSS (GiB) of this process and of its largest finished child (the RDKit workers)."""
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kib / 2**20, child_kib / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", nargs="+", default=list(SAMPLES), help="sample file stems")
    parser.add_argument("--bench-dir", type=Path, default=BENCH)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--recompute-reference", action="store_true",
                        help="reference stats from SMILES with this RDKit/ChemNet (slow once)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    from rdkit import rdBase

    from molgen.metrics.moses_suite import MOSES_KEYS, moses_metrics

    print(f"command: `{' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}`")
    print(f"machine: {machine()}; RDKit {rdBase.rdkitVersion}")
    source = "recomputed from SMILES" if args.recompute_reference else "MOSES precomputed stats"
    print(f"reference: {source}\n")
    all_ok = True
    results = {}
    for stem in args.samples:
        smiles = read_smiles(args.bench_dir / f"{stem}.csv")
        published = read_published(args.bench_dir / f"metrics_{stem}.csv")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        ours = moses_metrics(smiles, n_jobs=args.n_jobs, precomputed=not args.recompute_reference,
                             cache_dir=args.cache_dir, timings=timings)
        wall = time.perf_counter() - start
        results[stem] = (len(smiles), published, ours, wall, timings)

    for stem, (n, published, ours, wall, timings) in results.items():
        print(f"### {SAMPLES.get(stem, stem)} ({stem}.csv, {n} SMILES)\n")
        print("| metric | published | molgen | diff | ok |")
        print("|---|---:|---:|---:|:---:|")
        for key in MOSES_KEYS:
            text, ok = compare(key, published[key], ours[key])
            all_ok &= ok
            verdict = "pass" if ok else "FAIL"
            print(f"| {key} | {published[key]:.6g} | {ours[key]:.6g} | {text} | {verdict} |")
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        print(f"\nwall time {wall:.1f} s ({stages})\n")
    self_gib, child_gib = peak_rss_gib()
    print(f"peak RSS: main process {self_gib:.2f} GiB, largest worker {child_gib:.2f} GiB")
    print(f"tolerances: fractions ±{ABS_TOL} absolute; FCD and Wasserstein distances "
          f"{REL_TOL:.0%} relative")
    print("result:", "all metrics within tolerance" if all_ok else "SOME METRICS OUT OF TOLERANCE")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
