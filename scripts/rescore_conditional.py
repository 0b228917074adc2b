"""Re-measure the README's conditional tables with one or more oracles, on the same samples.

Every conditional number molgen reports is an oracle's MAE, so a new oracle means new tables. This
script draws each table's samples once (EDM's protocol: atom counts and targets of random ``Db``
molecules, :func:`molgen.conditional.edm_conditional_oracles`) and scores them with every
``--oracle`` side by side, baselines included (Naive, #Atoms, the oracle on real ``Db`` molecules).

Sections (``--sections``, default all):

- ``db6``: the shipped ``smiles-ar-db6``, each of its six properties, w = 1, T = 0.8;
- ``gap``: the shipped ``smiles-ar-gap`` at the (guidance, temperature) settings of the README;
- ``gap-mu``: the shipped ``smiles-ar-gap-mu`` on mu and on gap, w = 1, T = 0.8.

Usage::

    python scripts/rescore_conditional.py --oracle OLD.pt --oracle NEW.pt [-n 1000] [--sections gap,db6]
        [--out tables.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.conditional import DISPLAY_UNITS, edm_conditional_oracles  # noqa: E402
from molgen.generate import load_model  # noqa: E402
from molgen.io_utils import atomic_write_text  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.oracle import load_oracle  # noqa: E402

PROPS6 = ("alpha", "gap", "homo", "lumo", "mu", "Cv")
GAP_SETTINGS = ((0.0, 1.0), (0.0, 0.8), (1.0, 1.0), (1.0, 0.8), (3.0, 1.0))


def _jobs(section: str) -> list[tuple[str, str, float, float]]:
    """(pretrained model, property, guidance, temperature) of one section."""
    if section == "db6":
        return [("smiles-ar-db6", p, 1.0, 0.8) for p in PROPS6]
    if section == "gap":
        return [("smiles-ar-gap", "gap", w, t) for w, t in GAP_SETTINGS]
    if section == "gap-mu":
        return [("smiles-ar-gap-mu", p, 1.0, 0.8) for p in ("mu", "gap")]
    raise SystemExit(f"error: unknown section '{section}' (choose from: db6, gap, gap-mu)")


def _cell(prop: str, value: float) -> str:
    return f"{value * DISPLAY_UNITS.get(prop, ('', 1.0))[1]:.4g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle", action="append", default=[], metavar="PATH",
                    help="oracle weights (repeatable; default: the shipped one)")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sections", default="db6,gap,gap-mu")
    ap.add_argument("--out", default="rescore_conditional.md")
    args = ap.parse_args(argv)
    oracles = [load_oracle(p) for p in args.oracle] or [load_oracle()]
    versions = [o.version for o in oracles]
    models: dict = {}
    lines = [f"EDM conditional protocol, {args.n} samples per row, oracles {', '.join(versions)} on the same "
             f"samples; machine: {describe_machine()}. Command: `python scripts/rescore_conditional.py "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`.", ""]
    record = []
    heads = " | ".join(f"{kind} ({v})" for kind in ("model", "lower bound") for v in versions)
    lines += [f"| model | property (unit) | w | T | Naive ({versions[0]}) | #Atoms | {heads} | not scored |",
              "|---|---|---:|---:|" + "---:|" * (2 + 2 * len(versions) + 1)]
    for section in args.sections.split(","):
        for name, prop, w, t in _jobs(section.strip()):
            model = models.get(name) or models.setdefault(name, load_model(pretrained=name, device="cpu"))
            res = edm_conditional_oracles(model, prop, oracles, n=args.n, seed=args.seed, guidance=w,
                                          progress=False, sample_opts={"temperature": t})
            d0 = res[0].details
            unit = DISPLAY_UNITS.get(prop, ("", 1.0))[0]
            cells = [_cell(prop, d0["naive"]), _cell(prop, d0["n_atoms"])]
            cells += [_cell(prop, r.details["model"]) for r in res] + [_cell(prop, r.details["lower_bound"]) for r in res]
            lines.append(f"| `{name}` | {prop} ({unit}) | {w:g} | {t:g} | " + " | ".join(cells)
                         + f" | {res[0].unusable} / {args.n} |")
            print(lines[-1], flush=True)
            record.append({"model": name, "property": prop, "guidance": w, "temperature": t, "n": args.n,
                           "unusable": res[0].unusable,
                           "by_oracle": {r.oracle_version: r.details for r in res}})
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
