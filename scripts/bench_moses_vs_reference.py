#!/usr/bin/env python
"""Time molgen's MOSES metrics against MOSES's own implementation on the same sample file.

Runs, one after the other, each in its own process so that peak memory is measured per tool:

1. ``molgen benchmark FILE --reference moses --jobs J`` (molgen's suite);
2. ``moses.get_all_metrics(smiles, n_jobs=J, device="cpu")`` from the ``molsets`` package (MOSES's
   reference implementation, with its own ``fcd_torch`` ChemNet).

and prints wall time, peak RSS, their ratio and every metric from both tools, beside the published
value where the file has one (``metrics_<name>.csv`` next to ``<name>.csv``, as in MOSES's repository). MOSES 0.3.1 no longer imports on current libraries; two shims are installed in its
process only, each replacing a removed API by its documented successor: ``rdkit.six.iteritems``
(``dict.items``) and ``pandas.DataFrame.append`` (``pandas.concat``). Nothing else of MOSES is
changed.

MOSES's implementation is not a molgen dependency. Install it into a scratch folder first::

    pip install --no-deps --target /tmp/moses-impl molsets==0.3.1 fcd_torch==1.0.7
    python scripts/bench_moses_vs_reference.py [--file ../shared/benchmarks/moses/char_rnn_1.csv]
        [--moses-path /tmp/moses-impl] [--jobs 2] [--n N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from molgen.machine import cpu_name  # noqa: E402

#: Runs MOSES's get_all_metrics in a child process; argv: file, n, jobs, output JSON.
MOSES_CHILD = r"""
import json, sys, types
six = types.ModuleType("rdkit.six")
six.iteritems = lambda d: iter(d.items())
six.PY3 = True
sys.modules["rdkit.six"] = six
import pandas as pd
if not hasattr(pd.DataFrame, "append"):
    pd.DataFrame.append = lambda self, other, sort=False, ignore_index=False: pd.concat(
        [self, other], sort=sort, ignore_index=ignore_index)
from moses.metrics import get_all_metrics
smiles = pd.read_csv(sys.argv[1]).iloc[:, 0].astype(str).tolist()
n = int(sys.argv[2])
smiles = smiles[:n] if n > 0 else smiles
metrics = get_all_metrics(smiles, n_jobs=int(sys.argv[3]), device="cpu")
with open(sys.argv[4], "w") as fh:
    json.dump({k: float(v) for k, v in metrics.items()}, fh)
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        print(f"command failed ({rc}): {shlex.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024.0, rc  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(ROOT.parent / "shared" / "benchmarks" / "moses" / "char_rnn_1.csv"))
    ap.add_argument("--moses-path", default="/tmp/moses-impl", help="pip --target folder holding molsets + fcd_torch")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--n", type=int, default=0, help="first N molecules only (0: all)")
    args = ap.parse_args(argv)
    if not (Path(args.moses_path) / "moses").is_dir():
        print(f"error: MOSES's implementation is not in {args.moses_path}; see this script's docstring",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        sample = args.file
        if args.n > 0:  # the same first-N file for both tools
            lines = Path(args.file).read_text().splitlines()
            sample = str(Path(tmp) / "sample.csv")
            Path(sample).write_text("\n".join(lines[: args.n + 1]) + "\n")
        ours_json, theirs_json = Path(tmp) / "molgen.json", Path(tmp) / "moses.json"
        molgen = [sys.executable, "-m", "molgen", "benchmark", sample, "--reference", "moses",
                  "--jobs", str(args.jobs), "--out", str(ours_json),
                  "--tracking-uri", f"sqlite:///{tmp}/mlruns.db"]
        env = {**os.environ, "PYTHONPATH": args.moses_path}
        moses = [sys.executable, "-c", MOSES_CHILD, sample, "0", str(args.jobs), str(theirs_json)]
        ours = timed(molgen)
        theirs = timed(moses, env)
        if ours[2] or theirs[2]:
            return 1
        a = json.loads(ours_json.read_text())
        a = a.get("metrics", a)
        b = json.loads(theirs_json.read_text())
    common = [k for k in b if k in a]
    worst = max(common, key=lambda k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12))
    published_file = Path(args.file).with_name(f"metrics_{Path(args.file).name}")
    published = {}
    if published_file.is_file() and not args.n:
        for line in published_file.read_text().splitlines():
            key, _, value = line.partition(",")
            try:
                published[key.strip()] = float(value)
            except ValueError:
                pass
    print(f"file: {args.file}{f' (first {args.n})' if args.n else ''}; jobs {args.jobs}; "
          f"{os.cpu_count()} CPUs, {cpu_name()}")
    print(f"command: python scripts/bench_moses_vs_reference.py {shlex.join(sys.argv[1:] if argv is None else argv)}\n")
    print("| implementation | wall (s) | peak RSS (MiB) |\n|---|---:|---:|")
    print(f"| molgen benchmark --reference moses | {ours[0]:.0f} | {ours[1]:.0f} |")
    print(f"| MOSES get_all_metrics (molsets 0.3.1) | {theirs[0]:.0f} | {theirs[1]:.0f} |")
    print(f"\nspeed-up (MOSES wall / molgen wall): {theirs[0] / ours[0]:.2f}x; metrics compared: {len(common)}; "
          f"largest relative difference: {worst} molgen {a[worst]:.6g} vs MOSES {b[worst]:.6g}\n")
    print("| metric | molgen | MOSES today | published |\n|---|---:|---:|---:|")
    for k in common:
        pub = f"{published[k]:.6f}" if k in published else ""
        print(f"| {k} | {a[k]:.6f} | {b[k]:.6f} | {pub} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
