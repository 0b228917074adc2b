"""Train the oracle (molgen/oracle.py) on QM9 ``Da`` and report its MAE on ``Db``.

EDM's protocol: property regressors are trained on the first half (``Da``) of the QM9 training
split, early-stopped on the validation split, and their MAE on the second half (``Db``) is the
"lower bound" row of the conditional table. molgen trains one multi-task regressor for the six
protocol properties with an L1 loss on normalized targets, for a wall-clock budget, keeping the
weights with the best validation MAE (early stopping by selection).

Usage::

    python scripts/train_oracle.py [--minutes 75] [--batch-size 128] [--lr 1e-3] [--threads 2]
        [--device auto] [--valid-n 2000] [--val-every 200] [--out molgen/pretrained/oracle.pt]
        [--json oracle_mae.json] [--layers 4 --scalar-dim 64 --vector-dim 16]

Writes the weights atomically (with the budget, steps and Db MAE inside) and prints a Markdown table
of the Db MAE per property next to EDM's classifier.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molgen.config import BackboneConfig  # noqa: E402
from molgen.data.graphs import compute_stats, make_graphs  # noqa: E402
from molgen.data.qm9 import edm_splits, load_qm9  # noqa: E402
from molgen.oracle import ORACLE_PROPERTIES, PropertyOracle  # noqa: E402
from molgen.io_utils import atomic_write_text  # noqa: E402

#: EDM's classifier MAE on Db (Hoogeboom et al. 2022, Table 3 "QM9 (lower-bound)"), in user units.
EDM_LOWER_BOUND = {"alpha": 0.10, "gap": 0.064, "homo": 0.039, "lumo": 0.036, "mu": 0.043, "Cv": 0.040}
DISPLAY = {"alpha": ("Bohr^3", 1.0), "gap": ("meV", 1000.0), "homo": ("meV", 1000.0),
           "lumo": ("meV", 1000.0), "mu": ("D", 1.0), "Cv": ("cal/mol/K", 1.0)}


def _loader(graphs, batch_size, shuffle, seed=0):
    from torch_geometric.loader import DataLoader

    g = torch.Generator().manual_seed(seed)
    return DataLoader(graphs, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)


@torch.no_grad()
def mean_abs_error(model, loader, device) -> torch.Tensor:
    model.eval()
    total, count = None, 0
    for b in loader:
        b = b.to(device)
        pred = model(b.atom_types, b.pos, b.batch, b.num_graphs)
        err = (pred - model.std * b.y.view(b.num_graphs, -1) - model.mean).abs().sum(0)
        total = err if total is None else total + err
        count += b.num_graphs
    model.train()
    return (total / count).cpu()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=75.0, help="wall-clock training budget")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--valid-n", type=int, default=2000, help="validation molecules for early stopping")
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--scalar-dim", type=int, default=64)
    ap.add_argument("--vector-dim", type=int, default=16)
    ap.add_argument("--max-train", type=int, default=None, help="cap on Da molecules (smoke runs)")
    ap.add_argument("--max-test", type=int, default=None, help="cap on Db molecules (smoke runs)")
    ap.add_argument("--out", default="molgen/pretrained/oracle.pt")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="continue from these oracle weights (same architecture)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)

    data = load_qm9()
    splits = edm_splits(data.num_molecules)
    da, db = splits["da"], splits["db"]
    valid = splits["valid"][torch.randperm(len(splits["valid"]), generator=torch.Generator().manual_seed(1))]
    valid = valid[: args.valid_n]
    if args.max_train:
        da = da[: args.max_train]
    if args.max_test:
        db = db[: args.max_test]
    stats = compute_stats(data, da, ORACLE_PROPERTIES)
    train_loader = _loader(make_graphs(data, da, stats), args.batch_size, True, args.seed)
    valid_loader = _loader(make_graphs(data, valid, stats), 512, False)

    bcfg = BackboneConfig(num_layers=args.layers, scalar_dim=args.scalar_dim, vector_dim=args.vector_dim,
                          edge_dim=32, graph_dim=args.scalar_dim, cond_dim=32, num_rbf=32, rbf_max=10.0)
    model = PropertyOracle(bcfg, ORACLE_PROPERTIES, stats.mean, stats.std)
    previous = {}
    if args.init:
        from molgen.oracle import load_oracle

        init = load_oracle(args.init)
        model = PropertyOracle(init.bcfg, ORACLE_PROPERTIES, stats.mean, stats.std)
        model.load_state_dict(init.state_dict())
        previous = init.meta.get("training", {})
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    budget = args.minutes * 60.0
    print(f"oracle: {n_params:,} parameters, Da={len(da)}, valid={len(valid)}, device={device}, "
          f"budget {args.minutes:g} min", flush=True)

    best, best_state, step, epoch = math.inf, None, 0, 0
    start = time.perf_counter()
    done = False
    while not done:
        epoch += 1
        for b in train_loader:
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                done = True
                break
            for group in opt.param_groups:  # warm-up, then cosine over the time budget
                group["lr"] = args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
            b = b.to(device)
            pred = model.forward_normalized(b.atom_types, b.pos, b.batch, b.num_graphs)
            loss = (pred - b.y.view(b.num_graphs, -1)).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            if step % args.val_every == 0:
                mae = mean_abs_error(model, valid_loader, device)
                score = float((mae / model.std.cpu()).mean())
                if score < best:
                    best = score
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                print(f"step {step} epoch {epoch} {elapsed / 60:.1f} min loss {float(loss.detach()):.4f} "
                      f"valid normalized MAE {score:.4f} (best {best:.4f})", flush=True)
    train_minutes = (time.perf_counter() - start) / 60
    if best_state is not None:
        mae_valid = mean_abs_error(model, valid_loader, device)
        if float((mae_valid / model.std.cpu()).mean()) > best:
            model.load_state_dict(best_state)

    t0 = time.perf_counter()
    test_loader = _loader(make_graphs(data, db, stats), 512, False)
    mae_db = mean_abs_error(model, test_loader, device)
    eval_s = time.perf_counter() - t0
    if previous:  # a continued run reports the whole training history
        step += previous.get("steps", 0)
        epoch += previous.get("epochs", 0)
        train_minutes += previous.get("train_minutes", 0.0)
    result = {
        "mae_db": {p: float(v) for p, v in zip(ORACLE_PROPERTIES, mae_db)},
        "n_db": len(db), "n_da": len(da), "steps": step, "epochs": epoch, "train_minutes": round(train_minutes, 1),
        "batch_size": args.batch_size, "lr": args.lr, "parameters": n_params, "device": str(device),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
                   if device.type == "cpu" else torch.cuda.get_device_name(device),
        "command": "python scripts/train_oracle.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    if previous:
        result["command"] = previous.get("command", "") + " ; then " + result["command"]
    model.cpu().save(args.out, training=result)
    print(f"\nwrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB); Db evaluation {eval_s:.0f} s\n")
    print("| property | unit | molgen oracle MAE on Db | EDM classifier | ratio |")
    print("|---|---|---|---|---|")
    for p in ORACLE_PROPERTIES:
        unit, f = DISPLAY[p]
        ours, edm = result["mae_db"][p] * f, EDM_LOWER_BOUND[p] * f
        print(f"| {p} | {unit} | {ours:.4g} | {edm:.4g} | {ours / edm:.2f}x |")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
