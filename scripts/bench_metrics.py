"""Time ``molgen benchmark`` scoring of QM9 molecules without and with the geometry / prdc groups.

    OMP_NUM_THREADS=1 nice -n 15 python scripts/bench_metrics.py [--n 10000] [--jobs 2] [--format xyz]
                                                                  [--per-group] [--check]

``--n`` molecules of QM9's training split (the EDM split) are written as XYZ (or SDF) — not timed —
and scored against ``--reference qm9`` by :func:`molgen.metrics.suite.run_benchmark` (what
``molgen benchmark`` calls, minus the MLflow logging). Rows:

- ``geometry, first call``: the geometry group alone, building the QM9 geometry cache if missing;
- ``off``: ``basic,moses,fcd,embedding`` (the suite without the new groups), then ``off+geometry``;
  ``geometry adds`` is their difference;
- ``geometry_metrics, in-process``: the group's own function on the already-read records (warm
  cache): its cost without the run-to-run noise of the end-to-end rows;
- ``prdc core``: :func:`molgen.metrics.prdc.prdc` on two ``n × 128`` float64 matrices (the
  oracle's embedding size), what the ``prdc`` group adds beside ``embedding``;
- with ``--per-group``: every group alone (each includes reading the file: see ``basic``).

Reference caches other than geometry's (QM9 test-split statistics, oracle features) are built by
the first ``off`` call if missing (under ``$MOLGEN_CACHE`` or ``~/.cache/molgen``); build them
first for warm figures. Targets: ``off`` ≤ 60 s and geometry adding ≤ 30 s (``--check`` exits 1
when one is missed). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OFF = "basic,moses,fcd,embedding"
OFF_TARGET_S = 60.0
GEOMETRY_TARGET_S = 30.0


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="QM9 training molecules to score")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for RDKit features")
    parser.add_argument("--format", choices=("xyz", "sdf"), default="xyz", help="file the molecules are written to")
    parser.add_argument("--per-group", action="store_true", help="also time every metric group alone")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args()

    from molgen.chem.io import write_molecules
    from molgen.data.qm9 import edm_splits, load_qm9
    from molgen.data.readers import read_molecules
    from molgen.machine import describe_machine
    from molgen.metrics.geometry import geometry_metrics
    from molgen.metrics.prdc import prdc
    from molgen.metrics.suite import METRIC_GROUPS, _atomic_numbers, run_benchmark

    data = load_qm9()
    rows = edm_splits(data.num_molecules)["train"][: args.n].tolist()
    mols = [data.molecule(i) for i in rows]
    for m in mols:
        m.charges, m.properties = None, {}
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="molgen-bench-metrics-") as tmp:
        path = Path(tmp) / f"qm9_{args.n}.{args.format}"
        write_molecules(mols, path)
        score = lambda spec: run_benchmark(str(path), reference="qm9", metrics=spec, n_jobs=args.jobs)  # noqa: E731
        times["geometry, first call"], geo = _timed(lambda: score("geometry"))
        times["off"], _ = _timed(lambda: score(OFF))
        times["off+geometry"], full = _timed(lambda: score(OFF + ",geometry"))
        times["geometry adds"] = times["off+geometry"] - times["off"]
        records = read_molecules(path).records
        times["geometry_metrics, in-process"], _ = _timed(lambda: geometry_metrics(
            [r.mol for r in records], sample_z=[_atomic_numbers(r) for r in records], qm9_data=data))
        rng = np.random.default_rng(0)
        X, Y = rng.normal(size=(args.n, 128)), rng.normal(size=(args.n, 128))
        times[f"prdc core ({args.n:,} x {args.n:,} x 128)"], _ = _timed(lambda: prdc(X, Y))
        if args.per_group:
            for group in METRIC_GROUPS:
                times[f"{group} alone"], _ = _timed(lambda group=group: score(group))

    print(f"machine: {describe_machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"input: {args.n:,} QM9 training molecules as {args.format.upper()}, --reference qm9, --jobs {args.jobs}")
    print()
    print("| step | time (s) | target (s) | ok |")
    print("|---|---:|---:|:---:|")
    targets = {"off": OFF_TARGET_S, "geometry adds": GEOMETRY_TARGET_S}
    for name, t in times.items():
        target = targets.get(name)
        ok = "" if target is None else ("yes" if t <= target else "NO")
        print(f"| {name} | {t:.1f} | {'' if target is None else f'{target:.0f}'} | {ok} |")
    m = full.metrics
    print()
    print("values (off+geometry): " + ", ".join(f"{k} {m[k]:.4g}" for k in (
        "valid", "valid_connected", "geometry/bond_length_w1", "geometry/bond_angle_w1", "geometry/torsion_w1",
        "geometry/atom_type_tv", "geometry/bond_type_tv", "FD_emb") if k in m))
    missed = any(times[k] > t for k, t in targets.items())
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
