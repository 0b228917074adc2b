#!/usr/bin/env python
"""GDSS's 2D protocol on QM9 for a molgen model or a SMILES file, beside the published numbers.

Samples ``-n`` molecules (default 10,000) from a model, unconditionally, or reads a SMILES file,
and scores them with :func:`molgen.metrics.gdss.gdss_metrics`: validity without correction (a
graph family's own graph, strictly), uniqueness, novelty against every QM9 molecule outside the
test split, FCD against the test split (EDM's QM9 test split: GDSS's own split file is not part of
molgen; see :mod:`molgen.metrics.gdss`). Prints a Markdown table with rows for this run, a sample
of QM9's training split of the same size scored the same way (the floor: what FCD is for real
molecules, which also shows what another random 10 % of QM9 as test set would change) and the
published MoFlow, GDSS and DiGress numbers, then the command, the machine and the wall time.

Coordinates play no part in this protocol, so by default the graph families' conformer embedding
(RDKit ETKDG + MMFF, most of ``smiles-ar``'s sampling time) is skipped for this process: the
module-level ``embed_conformer`` of :mod:`molgen.models.smiles_chem` and
:mod:`molgen.chem.molgraph` is replaced by one returning ``None`` while sampling. The generated
graphs, strings and validity verdicts are the same (the RDKit seeds are drawn after decoding);
only ``positions`` are NaN. ``--embed`` keeps the embedding.

Usage::

    python scripts/gdss_report.py --pretrained smiles-ar-gap -n 10000 --sample-opt temperature=0.8
    python scripts/gdss_report.py --run RUN_ID [--seed 0] [--out report.json]
    python scripts/gdss_report.py --smiles samples.smi          # one SMILES per line, blank = invalid
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.errors import MolgenError  # noqa: E402
from molgen.metrics.gdss import ANCHORS, gdss_metrics, qm9_gdss_reference  # noqa: E402

GOAL = "validity w/o correction above DiGress's 98.19 % and FCD/Test <= 0.5"


def read_smiles_file(path: str) -> list[str]:
    """One sample per line (first comma/whitespace-separated field); a ``SMILES`` header is skipped.

    A blank line is kept as an empty string: an invalid sample (as ``--save-smiles`` writes them).
    """
    lines = Path(path).read_text().splitlines()
    out = [ln.replace(",", " ").split()[0] if ln.strip() else "" for ln in lines]
    if out and out[0].lower() == "smiles":
        out = out[1:]
    return out


@contextlib.contextmanager
def conformers_skipped(skip: bool) -> Iterator[None]:
    """While active (and ``skip``), the graph families' ETKDG embedding returns ``None`` (no 3D)."""
    if not skip:
        yield
        return
    import molgen.chem.molgraph as molgraph
    import molgen.models.smiles_chem as smiles_chem

    saved = [(m, m.embed_conformer) for m in (smiles_chem, molgraph) if hasattr(m, "embed_conformer")]
    for module, _ in saved:
        module.embed_conformer = lambda *args, **kwargs: None
    try:
        yield
    finally:
        for module, fn in saved:
            module.embed_conformer = fn


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown(rows: list[tuple[str, dict[str, Any], str]]) -> list[str]:
    lines = ["| row | valid w/o corr. % | valid, implicit H allowed % | unique % | novel % | FCD/Test | n | source |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m, source in rows:
        n = m.get("n")
        lines.append(f"| {name} | {pct(m.get('validity_wo_correction'))} | {pct(m.get('validity_lenient'))} | "
                     f"{pct(m.get('uniqueness'))} | {pct(m.get('novelty'))} | {num(m.get('fcd_test'))} | "
                     f"{'–' if n is None else f'{n:,}'} | {source} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pretrained", metavar="NAME", help="a shipped model (molgen.zoo)")
    src.add_argument("--run", metavar="RUN_ID", help="a training run (local outputs or MLflow)")
    src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint file")
    src.add_argument("--smiles", metavar="FILE", help="score a SMILES file instead of sampling")
    ap.add_argument("-n", type=int, default=None,
                    help="samples (default 10,000; with --smiles: the first N lines, default all)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed, also of the QM9 train sample")
    ap.add_argument("--sample-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="family sampler option, e.g. temperature=0.8 (repeatable)")
    ap.add_argument("--batch-size", type=int, default=None, help="molecules per sampling chunk")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--cache-dir", default=None, help="molgen's data cache (default $MOLGEN_CACHE or ~/.cache/molgen)")
    ap.add_argument("--embed", action="store_true", help="keep the graph families' 3D embedding (slower; unused here)")
    ap.add_argument("--no-floor", action="store_true", help="skip the QM9 training-sample row")
    ap.add_argument("--save-smiles", metavar="FILE",
                    help="write each sample's heavy-atom canonical SMILES (blank line: invalid)")
    ap.add_argument("--out", metavar="JSON", help="write the numbers to this JSON file (atomically)")
    args = ap.parse_args(argv)
    command = "python scripts/gdss_report.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, command)
    except MolgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, command: str) -> int:
    import json

    import numpy as np

    from molgen.io_utils import atomic_write_text
    from molgen.machine import describe_machine
    from molgen.metrics.gdss import judge

    if args.n is not None and args.n < 2:
        raise MolgenError("-n must be at least 2 (FCD needs two molecules)")
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    opts: dict[str, Any] = {}
    if args.smiles is not None:
        samples: list[Any] = read_smiles_file(args.smiles)[: args.n]
        what = f"SMILES file `{args.smiles}`"
        skip = False
    else:
        from molgen.generate import load_model
        from molgen.models.options import parse_sample_options

        opts = parse_sample_options(list(args.sample_opt))
        model = load_model(args.run, args.checkpoint, tracking_uri=args.tracking_uri, device=args.device,
                           pretrained=args.pretrained)
        n = 10_000 if args.n is None else args.n
        skip = not args.embed and "scaffold" not in opts  # a user scaffold is embedded by ETKDG
        t = time.perf_counter()
        with conformers_skipped(skip):
            samples = model.sample(n, seed=args.seed, batch_size=args.batch_size, progress=True, **opts)
        times["sampling_s"] = time.perf_counter() - t
        name = args.pretrained or args.run or Path(args.checkpoint).name
        shown = ", ".join(f"{k}={v}" for k, v in opts.items())
        what = f"molgen `{name}` ({model.name}{', ' + shown if shown else ''}, unconditional)"
    print(f"scoring {len(samples):,} samples ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    ref = qm9_gdss_reference(args.cache_dir)
    times["reference_s"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics = gdss_metrics(samples, test_smiles=ref.test_fcd, train_smiles=ref.train_smiles,
                           test_split=ref.test_split, canonical_train=True)
    times["scoring_s"] = time.perf_counter() - t
    if args.save_smiles:
        atomic_write_text(args.save_smiles, "".join(f"{judge(s).smiles or ''}\n" for s in samples))

    rows = [(f"{what}, this run", metrics, "this run")]
    floor = None
    if not args.no_floor:
        t = time.perf_counter()
        k = min(len(samples), len(ref.train_pool))
        pick = np.random.RandomState(args.seed).choice(len(ref.train_pool), k, replace=False)
        floor = gdss_metrics([ref.train_pool[i] for i in pick], test_smiles=ref.test_fcd,
                             train_smiles=ref.train_smiles, test_split=ref.test_split, canonical_train=True)
        times["floor_s"] = time.perf_counter() - t
        rows.append((f"QM9 train sample ({k:,} molecules of EDM's train split)", floor,
                     "molgen, same scoring (floor)"))
    for a in ANCHORS:
        rows.append((a.model, {"validity_wo_correction": a.validity_wo_correction, "fcd_test": a.fcd_test},
                     a.source))
    times["total_s"] = time.perf_counter() - t0

    digress = next(a for a in ANCHORS if a.model.startswith("DiGress"))
    met = metrics["validity_wo_correction"] > digress.validity_wo_correction and metrics.get(
        "fcd_test", float("inf")) <= 0.5
    reasons = ", ".join(f"{r} {c:,}" for r, c in metrics["invalid_reasons"].items()) or "none"
    lines = [f"GDSS 2D protocol on QM9 (heavy-atom molecules; FCD against the {ref.test_split}; "
             f"novelty against the {len(ref.train_smiles):,} distinct molecules outside it).", ""]
    lines += markdown(rows)
    lines += ["",
              f"Invalid samples by reason: {reasons}. Valid molecules that are one fragment: "
              f"{pct(metrics['connected'])} %.",
              f"Goal ({GOAL}): {'met' if met else 'not met'}.",
              f"Command: `{command}`" + ("" if skip or args.smiles else " (3D embedding kept)"),
              f"Machine: {describe_machine()}.",
              "Wall time: " + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        report = {"command": command, "machine": describe_machine(), "wall_time_s": times,
                  "source": what, "seed": args.seed, "sample_options": {k: repr(v) for k, v in opts.items()},
                  "embedding_skipped": skip, "test_split": ref.test_split,
                  "novelty_reference": f"{len(ref.train_smiles)} distinct QM9 molecules outside the test split",
                  "metrics": metrics, "qm9_train_sample": floor, "goal": GOAL, "goal_met": met,
                  "anchors": [vars(a) for a in ANCHORS], "markdown": text}
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
