"""Single, joint and composed conditioning on several properties, scored by the oracle.

For a run trained on two or more properties (e.g. ``molgen train --model ebm --condition gap
--condition mu``), targets are drawn jointly from the run's training molecules (as in EDM's
protocol: atom counts and property values of random training molecules), then molecules are
sampled

* ``single <p>``: conditioned on property ``p`` only (the other targets are still scored),
* ``joint``: conditioned on all properties at once (one network call with the full label set),
* ``product``: the EBM's product of experts, energies of single-property conditionals summed
  (``--sample-opt composition=product``; only families that take a ``composition`` option),

and the oracle's MAE to each target is reported per property as a Markdown table, next to an
unconditional row (the same atom counts, no target: what conditioning buys) and the percentage of
molecules the oracle could score (those with coordinates; the MAE is over them).

Usage::

    python scripts/composition_report.py (--run RUN_ID | --pretrained NAME) [--oracle PATH ...] [-n 200] [--steps 50] [--guidance 0]
        [--sample-opt KEY=VALUE ...] [--tracking-uri URI] [--out composition.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.conditional import DISPLAY_UNITS, oracle_predict  # noqa: E402
from molgen.data.graphs import select_indices  # noqa: E402
from molgen.data.qm9 import load_qm9  # noqa: E402
from molgen.generate import load_model  # noqa: E402
from molgen.models.options import parse_sample_options  # noqa: E402
from molgen.io_utils import atomic_write_text  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.oracle import load_oracle  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run")
    which.add_argument("--pretrained", metavar="NAME", help="a shipped model, e.g. smiles-ar-gap-mu")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="family sampler option for every setting, e.g. temperature=0.8 (repeatable)")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", default="composition.md")
    ap.add_argument("--oracle", action="append", default=[], metavar="PATH",
                    help="oracle weights (repeatable: one table each, same samples; default: the shipped one)")
    args = ap.parse_args(argv)
    oracles = [load_oracle(p) for p in args.oracle] or [load_oracle()]
    model = load_model(args.run, None, tracking_uri=args.tracking_uri, pretrained=args.pretrained)
    common = parse_sample_options(args.sample_opt)
    props = model.properties
    if len(props) < 2:
        print("error: the run must be trained on at least two properties", file=sys.stderr)
        return 2
    data = load_qm9(model.cfg.data.cache_dir)
    train = select_indices(data, **model.cfg.data.selection())["train"]
    rows_idx = train[torch.from_numpy(np.random.RandomState(args.seed).randint(0, len(train), args.n)).long()]
    n_atoms = data.n_atoms[rows_idx]
    targets = {p: data.property(p)[rows_idx].double().numpy() for p in props}

    settings = [("unconditional (no target)", None, {})]
    settings += [(f"single {p}", {p: targets[p]}, {}) for p in props] + [("joint", targets, {})]
    settings.append(("product of experts", targets, {"composition": "product"}))  # every family composes
    tables: list[dict] = [{} for _ in oracles]
    for name, cond, opts in settings:
        mols = model.sample(args.n, cond=cond, n_atoms=n_atoms, steps=args.steps, guidance=args.guidance,
                           seed=args.seed, **common, **opts)
        for table, oracle in zip(tables, oracles):
            preds, names = oracle_predict(mols, oracle)
            table[name] = {p: float(np.nanmean(np.abs(preds[:, names.index(p)] - targets[p]))) for p in props}
            table[name]["scored"] = float(np.isfinite(preds).all(axis=1).mean())
            print(oracle.version, name, table[name], flush=True)
    heads = [f"{p} MAE ({DISPLAY_UNITS.get(p, ('', 1.0))[0]})" for p in props]
    lines = [f"Model `{args.run or args.pretrained}` ({model.name}, trained on {', '.join(props)}), {args.n} molecules, targets "
             f"drawn jointly from its training molecules; machine: {describe_machine()}. "
             f"Command: `python scripts/composition_report.py {' '.join(sys.argv[1:] if argv is None else argv)}`."]
    for table, oracle in zip(tables, oracles):
        lines += ["", f"oracle version {oracle.version}:", "",
                  "| conditioning | " + " | ".join(heads) + " | scored % |", "|---|" + "---|" * (len(props) + 1)]
        for name, maes in table.items():
            cells = [f"{maes[p] * DISPLAY_UNITS.get(p, ('', 1.0))[1]:.4g}" for p in props] + [f"{100 * maes['scored']:.1f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
