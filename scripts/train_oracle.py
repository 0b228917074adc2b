"""Train the property oracle on QM9 ``Da`` in resumable chunks, export it, and measure it on ``Db``.

    # a chunk of a campaign (fresh: fixes the architecture and the schedule's length)
    OMP_NUM_THREADS=1 python scripts/train_oracle.py --minutes 60 [--total-steps 100000]
        [--layers 4 --scalar-dim 64 --vector-dim 16 --batch-size 128 --lr 1e-3] [--state PATH]
    # the next chunk: same trajectory, same step count (SIGTERM / Ctrl-C also save the state)
    OMP_NUM_THREADS=1 python scripts/train_oracle.py --minutes 60 --resume [--state PATH]
    # a branch with the loss (and selection score) relative to EDM's MAE per property
    cp STATE B.pt && python scripts/train_oracle.py --minutes 60 --resume --state B.pt --loss-weights edm
    # any chunk can end with a Db point on the learning curve and/or an export of the best weights
        ... --eval-db --export molgen/pretrained/oracle.pt
    # the MAE of the shipped (or --weights) oracle on all 50,000 Db molecules, as JSON
    python scripts/train_oracle.py --evaluate [--weights PATH] --out mae.json
    # the learning curve of a campaign (validation MAE and Db points) as Markdown
    python scripts/train_oracle.py --curve [--state PATH]

The state (default ``data/checkpoints/oracle/state.pt``) holds weights, optimizer, step, epoch and the
best validation weights (:mod:`molgen.oracle_training`). ``--evaluate`` JSON keys: ``alpha`` (Bohr³),
``gap`` / ``homo`` / ``lumo`` (meV), ``mu`` (D), ``Cv`` (cal/(mol K)).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.errors import MolgenError  # noqa: E402
from molgen.io_utils import atomic_write_text  # noqa: E402
from molgen.oracle_training import (DISPLAY, LOSS_WEIGHTS, OracleData, OracleTrainConfig, TrainingState,  # noqa: E402
                                    best_oracle, mae_display, mae_table, mean_abs_error, new_state,
                                    switch_loss_weights, train_chunk)
from molgen.machine import describe_machine  # noqa: E402
from molgen.oracle import ORACLE_PROPERTIES  # noqa: E402

DEFAULT_STATE = "data/checkpoints/oracle/state.pt"
#: OracleTrainConfig fields settable from the command line (fresh campaigns only)
CONFIG_FLAGS = ("layers", "scalar_dim", "vector_dim", "batch_size", "lr", "warmup_steps", "total_steps",
                "val_every", "valid_n", "seed", "max_train")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(weights: str | None, out: str | None, max_db: int | None, device: torch.device) -> int:
    from molgen.data.graphs import make_graphs
    from molgen.data.qm9 import edm_splits, load_qm9
    from molgen.oracle import load_oracle, oracle_file

    oracle = load_oracle(weights).to(device)
    data = load_qm9()
    db = edm_splits(data.num_molecules)["db"]
    db = db[:max_db] if max_db else db
    stats = _oracle_stats(oracle)
    mae = mean_abs_error(oracle, make_graphs(data, db, stats), device)
    user = dict(zip(ORACLE_PROPERTIES, map(float, mae)))
    print(f"oracle {weights or oracle_file()} (version {oracle.version}) on {len(db):,} Db molecules:\n")
    print(mae_table(user))
    if out:
        atomic_write_text(out, json.dumps(mae_display(user), indent=2) + "\n")
        print(f"\nwrote {out}")
    return 0


def _oracle_stats(oracle):
    """A ``DatasetStats``-like object whose ``normalize`` uses the oracle's own mean/std."""
    from types import SimpleNamespace

    mean, std = oracle.mean.cpu(), oracle.std.cpu()
    return SimpleNamespace(properties=list(oracle.properties), normalize=lambda y: (y - mean) / std)


def curve(state: TrainingState) -> str:
    lines = ["| step | epochs | hours | valid score | " + " | ".join(f"{p} ({DISPLAY[p][0]})" for p in ORACLE_PROPERTIES)
             + " | set |", "|---:|---:|---:|---:|" + "---:|" * len(ORACLE_PROPERTIES) + "---|"]
    rows = [(h["step"], h["epochs"], h["hours"], f"{h['valid_score']:.4f}", mae_display(h["valid_mae"]), "valid (2k)")
            for h in state.history]
    rows += [(h["step"], h["epochs"], h["hours"], "", mae_display(h["mae_db"]), "Db (all)") for h in state.db_history]
    for step, epochs, hours, score, mae, which in sorted(rows, key=lambda r: (r[0], r[5])):
        lines.append(f"| {step:,} | {epochs:.2f} | {hours:.2f} | {score} | "
                     + " | ".join(f"{mae[p]:.4g}" for p in ORACLE_PROPERTIES) + f" | {which} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of this chunk")
    ap.add_argument("--max-steps", type=int, default=None, help="stop this chunk after this many steps")
    ap.add_argument("--state", default=DEFAULT_STATE, help="the campaign's resumable state file")
    ap.add_argument("--resume", action="store_true", help="continue the campaign in --state")
    ap.add_argument("--eval-db", action="store_true", help="end the chunk with the best weights' MAE on all of Db")
    ap.add_argument("--export", metavar="PATH", help="write the best weights as an oracle file (e.g. the shipped one)")
    ap.add_argument("--evaluate", action="store_true", help="only measure --weights (default: the shipped oracle) on Db")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", default=None, help="--evaluate: write the Db MAE per property here as JSON")
    ap.add_argument("--curve", action="store_true", help="print the campaign's learning curve and exit")
    ap.add_argument("--max-db", type=int, default=None, help="cap on Db molecules (smoke runs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--loss-weights", choices=LOSS_WEIGHTS, default=None,
                    help="per-property loss weights: std (default) or edm; on --resume it branches the campaign")
    fresh = ap.add_argument_group("architecture and schedule (fresh campaigns only)")
    defaults = OracleTrainConfig()
    for name in CONFIG_FLAGS:
        default = getattr(defaults, name)
        fresh.add_argument("--" + name.replace("_", "-"), type=float if name == "lr" else int, default=None,
                           help=f"default {default}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    try:
        if args.evaluate:
            return evaluate(args.weights, args.out, args.max_db, device)
        state_path = Path(args.state)
        if args.curve:
            print(curve(TrainingState.load(state_path)))
            return 0
        given = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
        if args.resume:
            if not state_path.is_file():
                raise MolgenError(f"--resume: no training state at {state_path}")
            if given:
                raise MolgenError(f"--resume keeps the campaign's settings; drop {', '.join('--' + k for k in given)}")
            state = TrainingState.load(state_path)
        elif state_path.is_file():
            raise MolgenError(f"{state_path} holds a campaign already: add --resume, or pick another --state")
        else:
            state = None
        if state is None and args.loss_weights:
            given["loss_weights"] = args.loss_weights
        cfg = state.config if state else OracleTrainConfig(**given)
        data = OracleData(cfg, max_db=args.max_db)
        state = state or new_state(cfg, data)
        if args.loss_weights:
            switch_loss_weights(state, data, args.loss_weights, device)
            cfg = state.config
        state.commands.append("python scripts/train_oracle.py " + " ".join(sys.argv[1:] if argv is None else argv))
        state.machines.append(describe_machine())
        print(f"oracle campaign {state_path}: step {state.step:,} of {cfg.total_steps:,}, Da={len(data.train):,}, "
              f"valid={len(data.valid):,}, loss weights {cfg.loss_weights}, device={device}, "
              f"chunk budget {args.minutes:g} min", flush=True)
        state = train_chunk(state, data, minutes=args.minutes, device=device, max_steps=args.max_steps,
                            log=lambda s: print(s, flush=True))
        print(f"chunk ended ({state.stopped_by}) at step {state.step:,}, epoch {state.epoch} "
              f"(+{state.batch_in_epoch} batches), {state.train_seconds / 3600:.2f} h of training in all")
        state.save(state_path)  # before the Db evaluation: a signal during it keeps the chunk
        if args.eval_db:
            oracle = best_oracle(state, data).to(device)
            mae = mean_abs_error(oracle, data.db(), device)
            user = dict(zip(ORACLE_PROPERTIES, map(float, mae)))
            state.db_history.append({"step": state.step, "epochs": round(state.step * cfg.batch_size / len(data.train), 3),
                                     "hours": round(state.train_seconds / 3600, 4), "mae_db": user,
                                     "n_db": len(data.db_rows)})
            print(f"\nbest weights on {len(data.db_rows):,} Db molecules:\n{mae_table(user)}\n")
        state.save(state_path)
        print(f"saved {state_path}; continue with: python scripts/train_oracle.py --minutes M --resume"
              + ("" if args.state == DEFAULT_STATE else f" --state {args.state}"))
        if args.export:
            training = {"steps": state.step, "epochs": round(state.step * cfg.batch_size / len(data.train), 2),
                        "train_hours": round(state.train_seconds / 3600, 3), "commands": state.commands,
                        "machines": state.machines, "best_valid_score": state.best_score,
                        "mae_db": state.db_history[-1]["mae_db"] if state.db_history else None}
            best_oracle(state, data).cpu().save(args.export, training=training)
            print(f"exported the best weights to {args.export}")
    except MolgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
