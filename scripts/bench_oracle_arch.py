"""Oracle architectures side by side: each contender trains from scratch for the same wall clock.

    OMP_NUM_THREADS=1 python scripts/bench_oracle_arch.py --minutes 27 \
        [--contender 4x64x16 --contender 6x64x16 --contender 4x96x24] [--db-molecules 10000] [--out F.md]

A contender is ``LAYERSxSCALARSxVECTORS`` of the oracle's backbone; everything else is the campaign's
(``scripts/train_oracle.py``: AdamW, warm-up then cosine over ``--total-steps``, ``--loss-weights``,
batch 128, the same seed, so the same batches in the same order). The contenders run one after the
other in one process, on the same data and thread count: run it on a machine whose load stays the
same throughout (the seconds differ between machines; the ratios between contenders are the result).

Reported per contender: parameters, steps in the budget, the validation score (mean over properties
of MAE relative to EDM's classifier with ``--loss-weights edm``; the campaign's figure of merit) of
the best weights at 1/4, 1/2 and all of the budget, the best score up to the last validation step
every contender reached (per step: capacity, not speed), and the best weights' MAE on the first ``--db-molecules`` of
``Db``. Lower is better everywhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.errors import MolgenError  # noqa: E402
from molgen.io_utils import atomic_write_text  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.oracle import ORACLE_PROPERTIES  # noqa: E402
from molgen.oracle_training import (DISPLAY, EDM_LOWER_BOUND, LOSS_WEIGHTS, OracleData, OracleTrainConfig,  # noqa: E402
                                    best_oracle, mae_display, mean_abs_error, new_state, train_chunk)

DEFAULT_CONTENDERS = ("4x64x16", "6x64x16", "4x96x24")
FRACTIONS = (0.25, 0.5, 1.0)


def parse_contender(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text.strip())
    if not m or min(map(int, m.groups())) < 1:
        raise MolgenError(f"--contender must be LAYERSxSCALARSxVECTORS (e.g. 4x64x16), got {text!r}")
    return tuple(map(int, m.groups()))


def best_until(history: list[dict], *, hours: float | None = None, step: int | None = None) -> float | None:
    """The best validation score among the rows up to ``hours`` of training (or up to ``step``)."""
    rows = [h["valid_score"] for h in history
            if (hours is None or h["hours"] <= hours + 1e-9) and (step is None or h["step"] <= step)]
    return min(rows) if rows else None


def summarize(runs: list[dict], minutes: float) -> str:
    """Markdown table of the contenders (``runs``: name, params, steps, history, db_mae)."""
    common = min(max((h["step"] for h in r["history"]), default=0) for r in runs)  # last validation all reached
    head = ["contender (layers x scalars x vectors)", "params", "steps", "steps/min"]
    head += [f"score at {f:g} of the budget" for f in FRACTIONS] + [f"score at step {common:,}"]
    head += [f"Db {p} ({DISPLAY[p][0]})" for p in ORACLE_PROPERTIES]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for r in runs:
        cells = [r["name"], f"{r['params']:,}", f"{r['steps']:,}", f"{r['steps'] / minutes:.1f}"]
        cells += [fmt(best_until(r["history"], hours=f * minutes / 60)) for f in FRACTIONS]
        cells.append(fmt(best_until(r["history"], step=common)))
        cells += [f"{v:.4g}" for v in mae_display(r["db_mae"]).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=27.0, help="wall-clock budget of each contender")
    ap.add_argument("--contender", action="append", default=None, help="LAYERSxSCALARSxVECTORS (repeatable)")
    ap.add_argument("--max-steps", type=int, default=None, help="also stop each contender after this many steps")
    ap.add_argument("--total-steps", type=int, default=60_000, help="cosine schedule length (the campaign's)")
    ap.add_argument("--loss-weights", choices=LOSS_WEIGHTS, default="edm")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--db-molecules", type=int, default=10_000, help="Db molecules scored at the end (0: all)")
    ap.add_argument("--max-train", type=int, default=None, help="cap on Da molecules (smoke runs)")
    ap.add_argument("--valid-n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the table (Markdown) here, and the curves as JSON beside it")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    try:
        shapes = [parse_contender(c) for c in (args.contender or DEFAULT_CONTENDERS)]
        base = dict(total_steps=args.total_steps, loss_weights=args.loss_weights, val_every=args.val_every,
                    max_train=args.max_train, valid_n=args.valid_n, batch_size=args.batch_size)
        data = OracleData(OracleTrainConfig(**base), max_db=args.db_molecules or None)
        db = data.db()
        runs = []
        for layers, scalars, vectors in shapes:
            cfg = OracleTrainConfig(layers=layers, scalar_dim=scalars, vector_dim=vectors, **base)
            name = f"{layers}x{scalars}x{vectors}"
            state = new_state(cfg, data)
            params = sum(p.numel() for p in best_oracle(state, data).parameters())
            print(f"{name}: {params:,} parameters, {args.minutes:g} min", flush=True)
            state = train_chunk(state, data, minutes=args.minutes, device=device, max_steps=args.max_steps,
                                log=lambda s: print(f"  {name} {s}", flush=True))
            if state.stopped_by not in ("budget", "total_steps"):
                raise MolgenError(f"stopped by {state.stopped_by}")
            mae = mean_abs_error(best_oracle(state, data), db, device)
            runs.append({"name": name, "params": params, "steps": state.step, "history": state.history,
                         "db_mae": dict(zip(ORACLE_PROPERTIES, map(float, mae)))})
        table = summarize(runs, args.minutes)
        header = (f"{args.minutes:g} min each, {describe_machine()}; "
                  f"score = best validation score ({args.loss_weights} weights, {len(data.valid):,} molecules); "
                  f"Db = first {len(db):,} Db molecules; EDM's classifier: "
                  + ", ".join(f"{p} {v:g}" for p, v in mae_display(EDM_LOWER_BOUND).items()))
        print("\n" + header + "\n\n" + table)
        if args.out:
            atomic_write_text(args.out, header + "\n\n" + table + "\n")
            atomic_write_text(str(Path(args.out).with_suffix(".json")),
                              json.dumps({"header": header, "runs": runs}, indent=1) + "\n")
            print(f"\nwrote {args.out}")
    except MolgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
