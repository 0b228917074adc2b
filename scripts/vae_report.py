#!/usr/bin/env python
"""What a trained graph VAE (``vae``) gives, side by side for several checkpoints.

For each checkpoint (path or MLflow run id):

- **samples**: ``-n`` unconditional molecules (``z ~ p(z)``, seeded), scored by
  :func:`molgen.metrics.gdss.gdss_metrics` without FCD: strict validity (the family's own graph,
  no correction), uniqueness among the valid ones, novelty against every QM9 molecule outside EDM's
  test split; and the number of distinct molecules per 1,000 samples. Coordinates play no part here,
  so the conformer embedding is skipped (as in ``scripts/gdss_report.py``).
- **reconstruction**: ``--probe`` molecules of EDM's validation split are encoded (posterior mean)
  and decoded greedily (argmax; ``top_k=1`` for the smiles decoder): the fraction whose decoded
  canonical SMILES is the input's (the VAE's reconstruction accuracy, Gómez-Bombarelli et al. 2018).
- **latent probes**: held-out R² of a linear probe from the posterior mean to each of the six EDM
  properties (:func:`molgen.models.vae_latent.latent_probe_r2`) on the same molecules.
- **interpolation**: ``--pairs`` random pairs of those molecules, 8 points on the straight line between
  their latent means, decoded greedily: strict validity of the points and distinct molecules per line.

Prints a Markdown table, the command, the machine and the wall time; ``--out`` writes the JSON.

Usage::

    python scripts/vae_report.py --checkpoint A.pt --checkpoint B.pt -n 1000 --probe 1000 --out vae.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gdss_report import conformers_skipped  # noqa: E402

from molgen.errors import MolgenError  # noqa: E402

PROPS = ("alpha", "gap", "homo", "lumo", "mu", "Cv")


def greedy(model: Any) -> dict[str, Any]:
    return {"top_k": 1} if model.fc.decoder == "smiles" else {}


def report_one(ref: str, args: argparse.Namespace, data: Any, identities: list[str | None],
               known: frozenset[str]) -> dict[str, Any]:
    from molgen.data.graphs import make_graphs, select_indices
    from molgen.generate import load_model
    from molgen.metrics.gdss import gdss_metrics, judge
    from molgen.models.vae_latent import interpolate, latent_means, latent_probe_r2

    path = Path(ref)
    model = load_model(checkpoint=str(path)) if path.exists() else load_model(run_id=ref)
    if model.name != "vae":
        raise MolgenError(f"{ref} is a {model.name} model, not a vae")
    model.eval()
    out: dict[str, Any] = {"checkpoint": ref, "decoder": model.fc.decoder}
    t0 = time.time()
    with _no_conformers():
        mols = model.sample(args.n, seed=args.seed)
    out["sample_seconds"] = time.time() - t0
    g = gdss_metrics(mols, test_smiles=None, train_smiles=known, canonical_train=True)
    out.update({"validity": g["validity_wo_correction"], "uniqueness": g["uniqueness"], "novelty": g["novelty"]})
    out["distinct_per_1000"] = 1000 * len({judge(m).smiles for m in mols} - {None}) / max(1, len(mols))

    idx = select_indices(data, split="train")["valid"][: args.probe]
    graphs = make_graphs(data, idx, model.stats)
    mu, _ = latent_means(model, graphs)
    cols = {p: data.properties[idx, data.property_names.index(p)].numpy() for p in PROPS}
    out["probe_r2"] = latent_probe_r2(model, graphs, cols, seed=args.seed)
    counts = torch.tensor([gr.num_nodes for gr in graphs])
    y, y_mask = model.resolve_cond(len(graphs), None)
    with _no_conformers():
        recon = model.decode_latents(mu.to(model.device), y, y_mask, counts, seeds=list(range(len(graphs))),
                                     **greedy(model))
    truth = [identities[int(i)] for i in idx]
    out["reconstruction"] = float(np.mean([judge(m).smiles == t for m, t in zip(recon, truth)]))
    rng = np.random.default_rng(args.seed)
    valid, distinct = [], []
    for _ in range(args.pairs):
        a, b = rng.choice(len(graphs), 2, replace=False)
        with _no_conformers():
            line = interpolate(model, graphs[a], graphs[b], steps=8, seed=args.seed, **greedy(model))
        ids = [judge(m).smiles for m in line]
        valid.append(np.mean([i is not None for i in ids]))
        distinct.append(len(set(ids) - {None}))
    out["interpolation_valid"] = float(np.mean(valid))
    out["interpolation_distinct"] = float(np.mean(distinct))
    out["latent_dim_active"] = int((mu.var(0) > 1e-2).sum())
    return out


def _no_conformers():
    return conformers_skipped(True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="checkpoint path or MLflow run id")
    ap.add_argument("-n", type=int, default=1000, help="unconditional samples per model")
    ap.add_argument("--probe", type=int, default=1000, help="validation molecules for probes / reconstruction")
    ap.add_argument("--pairs", type=int, default=20, help="interpolation lines")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args(argv)
    from molgen.data.canonical import canonical_qm9_smiles
    from molgen.data.qm9 import edm_splits, load_qm9
    from molgen.machine import describe_machine

    start = time.time()
    try:
        data = load_qm9()
        test = set(edm_splits(data.num_molecules)["test"].tolist())
        identities = canonical_qm9_smiles(data)
        known = frozenset(c for i, c in enumerate(identities) if c and i not in test)
        rows = [report_one(ref, args, data, identities, known) for ref in args.checkpoint]
    except MolgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| checkpoint | decoder | valid (strict) | unique | novel | distinct / 1000 | reconstruction | "
          "interp. valid | interp. distinct / 8 | active dims | " + " | ".join(f"R² {p}" for p in PROPS) + " |")
    print("|" + "---|" * (10 + len(PROPS)))
    for r in rows:
        print(f"| {r['checkpoint']} | {r['decoder']} | {r['validity']:.3f} | {r['uniqueness']:.3f} | "
              f"{r['novelty']:.3f} | {r['distinct_per_1000']:.0f} | {r['reconstruction']:.3f} | "
              f"{r['interpolation_valid']:.3f} | {r['interpolation_distinct']:.1f} | {r['latent_dim_active']} | "
              + " | ".join(f"{r['probe_r2'][p]:.2f}" for p in PROPS) + " |")
    footer = {"command": "python scripts/vae_report.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "machine": describe_machine(), "seconds": round(time.time() - start, 1)}
    print(f"\ncommand: {footer['command']}\nmachine: {footer['machine']}\nwall time: {footer['seconds']} s")
    if args.out:
        from molgen.io_utils import atomic_write_text

        atomic_write_text(args.out, json.dumps({"rows": rows, **footer}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
