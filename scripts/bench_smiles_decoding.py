"""smiles-ar sampling with and without the grammar mask (molgen.models.smiles_grammar), side by side.

Samples ``-n`` molecules from a shipped smiles-ar model four ways in one process: unconditional and
with classifier-free guidance ``--guidance`` (targets and atom counts drawn jointly from EDM's Db
half of QM9, as ``molgen.conditional.edm_conditional`` does), each with ``constrained=False``
(decoding as before the grammar existed) and ``constrained=True``. Prints a Markdown table: strict
validity (RDKit adds no hydrogen; ``molgen.metrics.basic``), lenient validity, uniqueness (among
valid), novelty (vs the model's QM9 training molecules), decoding seconds (the token loop) and
sampling seconds (``model.sample``: decoding + string -> molecule + ETKDG/MMFF conformers of the
valid ones, so more valid molecules cost more there).

    python scripts/bench_smiles_decoding.py -n 1000 --seed 1 --guidance 3
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--pretrained", default="smiles-ar-gap")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from molgen.data.canonical import canonical_qm9_smiles
    from molgen.data.graphs import select_indices
    from molgen.data.qm9 import edm_splits, load_qm9
    from molgen.generate import load_model
    from molgen.machine import describe_machine
    from molgen.metrics.basic import basic_metrics

    model = load_model(pretrained=args.pretrained)
    data = load_qm9(model.cfg.data.cache_dir)
    canonical = canonical_qm9_smiles(data, model.cfg.data.cache_dir)
    train = {canonical[i] for i in select_indices(data, **model.cfg.data.selection())["train"].tolist()} - {None}
    prop = model.properties[0]
    db = edm_splits(data.num_molecules)["db"]
    pick = torch.from_numpy(np.random.RandomState(args.seed).randint(0, len(db), size=args.n)).long()
    guided = {"cond": {prop: data.property(prop)[db[pick]].double().numpy()}, "n_atoms": data.n_atoms[db[pick]],
              "guidance": args.guidance}

    decode_time = [0.0]
    decode = model._decode

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return decode(*a, **k)
        finally:
            decode_time[0] += time.perf_counter() - t0

    model._decode = timed
    rows = []
    for name, kw in (("unconditional", {}), (f"{prop} targets, w = {args.guidance:g}", guided)):
        for constrained in (False, True):
            decode_time[0] = 0.0
            t0 = time.perf_counter()
            mols = model.sample(args.n, seed=args.seed, temperature=args.temperature, constrained=constrained,
                                progress=False, **kw)
            total = time.perf_counter() - t0
            m = basic_metrics(mols, train_smiles=train)
            rows.append((name, "grammar" if constrained else "today", m, decode_time[0], total))

    print(f"`{shlex.join(['python', 'scripts/bench_smiles_decoding.py', *(sys.argv[1:] if argv is None else argv)])}`"
          f" — {args.pretrained}, T = {args.temperature:g}, n = {args.n}, seed {args.seed}; {describe_machine()}, "
          f"torch {torch.__version__}\n")
    print("| sampling | mask | strict validity | lenient validity | uniqueness | novelty | decoding s | sampling s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, mask, m, dec, total in rows:
        print(f"| {name} | {mask} | {100 * m['validity']:.1f} % | {100 * m['validity_lenient']:.1f} % | "
              f"{100 * m['uniqueness']:.1f} % | {100 * m['novelty']:.1f} % | {dec:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
