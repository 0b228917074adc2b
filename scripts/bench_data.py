"""Benchmark the QM9 data layer: cold processing (CSV parse + cache write) and warm cache load.

Usage: ``python scripts/bench_data.py [--repeat N] [--check]``. Prints a Markdown table.
With ``--check`` the exit status is 1 if a time exceeds its target (cold 120 s, warm 5 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

from molgen.data.qm9 import load_qm9

COLD_TARGET_S = 120.0
WARM_TARGET_S = 5.0


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="warm loads to time (median shown)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="molgen-bench-") as cache:
        cold, data = _timed(lambda: load_qm9(cache, rebuild=True))
        warm = [_timed(lambda: load_qm9(cache))[0] for _ in range(max(1, args.repeat))]
        size_mb = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 1e6
    warm_med = statistics.median(warm)

    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} CPUs, {cpu} ({platform.machine()}), "
          f"Python {platform.python_version()}, torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"dataset: {data.num_molecules:,} molecules, {data.atom_types.numel():,} atoms; "
          f"cache file {size_mb:.1f} MB")
    print()
    print("| step | time (s) | target (s) | ok |")
    print("|---|---:|---:|:---:|")
    rows = [
        ("cold: parse qm9pack CSVs + write cache", cold, COLD_TARGET_S),
        (f"warm: load cache (median of {len(warm)})", warm_med, WARM_TARGET_S),
    ]
    for name, t, target in rows:
        print(f"| {name} | {t:.2f} | {target:.0f} | {'yes' if t <= target else 'NO'} |")
    missed = cold > COLD_TARGET_S or warm_med > WARM_TARGET_S
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
