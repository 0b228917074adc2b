#!/usr/bin/env python
"""Ship a trained model as a pretrained generator (``molgen generate --pretrained NAME``).

    python scripts/export_pretrained.py CHECKPOINT --name NAME --description TEXT \
        --command "molgen train ..." --training-time "37 min" [--machine TEXT] \
        [--result KEY VALUE ...] [--folder molgen/pretrained]

Writes ``<folder>/<NAME>.pt`` (config, statistics and EMA weights of CHECKPOINT, no optimizer
state; at most 20 MiB, checked by rebuilding the model) and its entry in ``<folder>/models.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.checkpoint import load_checkpoint  # noqa: E402
from molgen.errors import MolgenError  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402
from molgen.zoo import PretrainedModel, export_pretrained  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--description", required=True)
    parser.add_argument("--command", required=True, help="the command that trained it")
    parser.add_argument("--training-time", required=True)
    parser.add_argument("--machine", default=None, help="default: this machine")
    parser.add_argument("--result", action="append", default=[], nargs=2, metavar=("KEY", "VALUE"),
                        help="a measured result, e.g. 'gap MAE (meV)' '442 (molgen evaluate ...)'")
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    try:
        config = load_checkpoint(args.checkpoint)["config"]
        results = dict(args.result)
        entry = PretrainedModel(
            name=args.name, file=f"{args.name}.pt", family=config["model"],
            properties=list(config["data"]["properties"]), description=args.description,
            command=args.command, machine=args.machine or describe_machine(),
            training_time=args.training_time, results=results,
        )
        path = export_pretrained(args.checkpoint, entry, args.folder)
    except (MolgenError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
