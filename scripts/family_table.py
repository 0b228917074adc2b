"""Train every family with the same budget and write the family table (Markdown).

For each registered family: ``molgen train --model NAME --preset PRESET --steps STEPS`` (the same
backbone size, batch size, data and step budget for all, from the preset), then ``N`` samples with
``--sample-steps`` solver steps where the family has steps, scored with EDM's metrics
(validity, uniqueness, novelty, atom / molecule stability), the ``molgen benchmark`` suite against
QM9 (FCD/Test, FD on oracle embeddings) and the test NLL where the family has a likelihood.

Usage::

    python scripts/family_table.py [--preset demo] [--steps 300] [--n 200] [--sample-steps 50]
        [--nll-molecules 64] [--families diffusion,flow-matching,...] [--out family_table.md]
        [--tracking-uri URI]

Every run is logged to MLflow (default ./mlruns.db), so the table's rows can be compared in
``molgen ui``. The table names the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.config import resolve_config  # noqa: E402
from molgen.models.registry import family_names, get_family  # noqa: E402
from molgen.io_utils import atomic_write_text  # noqa: E402
from molgen.machine import describe_machine  # noqa: E402

ANCHORS = {  # ../shared/ANCHORS.md, unconditional QM9 (EDM protocol): mol. stability %, valid x unique %
    "diffusion": "EDM 82.0 / 90.7", "flow-matching": "EquiFM 88.3 / 93.5", "flow": "E-NF 4.9 / 39.4",
    "score": "GDSS (2D) valid 95.7", "ebm": "GraphEBM (2D) valid 8.2", "vae": "–", "smiles-ar": "–",
}


def run_family(name: str, args) -> dict:
    from molgen.data.canonical import canonical_qm9_smiles
    from molgen.data.graphs import select_indices
    from molgen.data.qm9 import load_qm9
    from molgen.evaluate import suite_metrics, test_nll
    from molgen.metrics.basic import basic_metrics
    from molgen.train import train

    family = get_family(name)
    cfg = resolve_config(name, family.config_cls, preset=args.preset, overrides={
        "train": {"steps": args.steps, "val_every": args.steps, "eval_every": 10 ** 9,
                  "checkpoint_every": args.steps, "seed": args.seed}})
    t0 = time.perf_counter()
    result = train(cfg, tracking_uri=args.tracking_uri, progress=False, log=lambda *a, **k: None)
    train_s = time.perf_counter() - t0
    from molgen.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(result.checkpoint))
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    mols = model.sample(args.n, steps=args.sample_steps, seed=args.seed)
    sample_s = time.perf_counter() - t0
    data = load_qm9(cfg.data.cache_dir)
    canonical = canonical_qm9_smiles(data, cfg.data.cache_dir)
    train_ids = {canonical[i] for i in select_indices(data, **cfg.data.selection())["train"].tolist()} - {None}
    row = {"family": name, "run_id": result.run_id, "params": params, "train_s": train_s, "sample_s": sample_s}
    row.update(basic_metrics(mols, train_smiles=train_ids))
    suite = suite_metrics(mols, cache_dir=cfg.data.cache_dir)
    row["FCD"] = suite.get("FCD/Test", float("nan"))
    row["FD_emb"] = suite.get("FD_emb", float("nan"))
    nll = test_nll(model, n_molecules=args.nll_molecules, seed=args.seed) if args.nll_molecules else None
    row["nll"] = float("nan") if nll is None else nll
    return row


def fmt(v: float, pct: bool = False) -> str:
    if v != v:  # NaN
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--nll-molecules", type=int, default=64)
    ap.add_argument("--families", default=None, help="comma-separated subset (default: all registered)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", default="family_table.md")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    names = args.families.split(",") if args.families else family_names()
    rows = []
    for name in names:
        print(f"== {name}", flush=True)
        try:
            rows.append(run_family(name, args))
        except Exception as exc:  # noqa: BLE001 - one family failing must not lose the others' rows
            print(f"   {name} failed: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"family": name, "error": f"{type(exc).__name__}: {exc}"})
        print(f"   {rows[-1]}", flush=True)
    machine = describe_machine()
    cmd = "python scripts/family_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"Budget: preset `{args.preset}`, {args.steps} training steps each, {args.n} samples with "
        f"{args.sample_steps} solver steps, NLL on {args.nll_molecules} test molecules. Machine: {machine}. "
        f"Command: `{cmd}`.", "",
        "| family | valid % | unique % | novel % | atom stab % | mol stab % | FCD | FD_emb | NLL (nats/mol) "
        "| train s | sample s | params | anchor (mol stab / V×U %) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | failed: {r['error']} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['family']} | {fmt(r['validity'], True)} | {fmt(r['uniqueness'], True)} | "
            f"{fmt(r.get('novelty', float('nan')), True)} | {fmt(r['atom_stability'], True)} | "
            f"{fmt(r['mol_stability'], True)} | {fmt(r['FCD'])} | {fmt(r['FD_emb'])} | {fmt(r['nll'])} | "
            f"{r['train_s']:.0f} | {r['sample_s']:.0f} | {r['params']:,} | {ANCHORS.get(r['family'], '–')} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print("\n" + text)
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
