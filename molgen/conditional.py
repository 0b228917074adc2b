"""How close do conditional samples come to their targets? Oracle scoring and EDM's protocol.

Two uses:

* ``molgen generate --target ...``: :func:`score_targets` writes the oracle's predictions
  (``oracle_<prop>``) and the error to target (``error_<prop>``) into every molecule and returns
  the MAE per targeted property and the hit rate: the fraction of *all* generated molecules that
  are valid, unique (first occurrence of their canonical SMILES) and within ``tol`` of every
  target the oracle can predict.
* ``molgen evaluate --protocol edm-conditional --property P``: :func:`edm_conditional` reproduces
  Hoogeboom et al. 2022, Sec. 5.2 / Table 3. The generator is trained on ``Db``, the oracle on
  ``Da``. Atom counts and targets are drawn jointly from the generator's training molecules
  (EDM draws N from the histogram, then the target from the property histogram given N; drawing
  (N, value) pairs of random ``Db`` molecules samples the same joint distribution without its
  binning). The oracle predicts each sample's property and the MAE to the target is reported,
  next to three baselines computed here: the oracle on real ``Db`` molecules (lower bound), on
  ``Db`` with shuffled labels (naive upper bound), and a predictor that sees only the atom count
  (mean of the property per atom count on ``Da``), in the layout of EDM's table.

Every number here depends on the oracle: callers report :attr:`~molgen.oracle.PropertyOracle.version`
with them (:attr:`ProtocolResult.oracle_version`, a row of its table; MLflow tag
``molgen.oracle_version``; pass the oracle to :func:`score_targets` to know which one scored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from molgen.chem.elements import Molecule3D
from molgen.data.properties import get_property
from molgen.errors import MolgenError

#: Default ``--tol`` per property (user units): a few times the oracle's own error on real molecules.
DEFAULT_TOLERANCES: dict[str, float] = {"alpha": 1.0, "gap": 0.2, "homo": 0.1, "lumo": 0.2, "mu": 0.3, "Cv": 0.5}
#: Display unit and factor from user units, as EDM's table prints them.
DISPLAY_UNITS: dict[str, tuple[str, float]] = {
    "alpha": ("Bohr^3", 1.0), "gap": ("meV", 1000.0), "homo": ("meV", 1000.0), "lumo": ("meV", 1000.0),
    "mu": ("D", 1.0), "Cv": ("cal/mol K", 1.0),
}


def parse_tolerances(items: Sequence[str]) -> dict[str, float]:
    """``["gap=0.1", "mu=0.5D"]`` -> tolerances in user units (same syntax and units as ``--target``)."""
    from molgen.targets import parse_target

    out: dict[str, float] = {}
    for item in items:
        name, value = parse_target(item, check_range=False, flag="--tol")
        if value <= 0:
            raise MolgenError(f"--tol {item}: the tolerance must be positive")
        out[name] = value
    return out


def oracle_predict(mols: Sequence[Molecule3D], oracle=None) -> tuple[np.ndarray, list[str]]:
    """Oracle predictions ``[n, P]`` (NaN for molecules without coordinates) and the property names."""
    from molgen.oracle import load_oracle, oracle_outputs

    oracle = oracle if oracle is not None else load_oracle()
    preds, _ = oracle_outputs(oracle, mols)
    return preds, list(oracle.properties)


def score_targets(mols: Sequence[Molecule3D], cond: dict[str, float], *, tol: dict[str, float] | None = None,
                  oracle=None) -> dict[str, float]:
    """Annotate ``mols`` with oracle predictions and errors; MAE per target and the hit rate.

    Returns flat metrics: ``mae/<prop>`` (user units, over molecules with coordinates),
    ``hit_rate``, ``oracle/unusable`` (molecules without coordinates) and, for targets the oracle
    cannot predict, ``unscored/<prop>`` = 1. They depend on the oracle (default :func:`molgen.oracle.load_oracle`):
    report its ``version`` with them.
    """
    from molgen.metrics.basic import assess

    preds, names = oracle_predict(mols, oracle)
    tol = {**DEFAULT_TOLERANCES, **(tol or {})}
    for m, row in zip(mols, preds):
        for j, name in enumerate(names):
            if np.isfinite(row[j]):
                m.properties[f"oracle_{name}"] = float(row[j])
                if name in cond:
                    m.properties[f"error_{name}"] = float(row[j] - cond[name])
    out: dict[str, float] = {"oracle/unusable": float(np.isnan(preds).all(axis=1).sum())}
    scored = [p for p in cond if p in names]
    for p in cond:
        if p not in names:
            out[f"unscored/{p}"] = 1.0
    hits = np.ones(len(mols), dtype=bool)
    for p in scored:
        err = np.abs(preds[:, names.index(p)] - cond[p])
        finite = np.isfinite(err)
        out[f"mae/{p}"] = float(err[finite].mean()) if finite.any() else float("nan")
        limit = tol.get(p, None)
        if limit is None:
            raise MolgenError(f"no default tolerance for '{p}'; give --tol {p}=VALUE")
        hits &= finite & (err <= limit)
    seen: set[str] = set()
    for i, m in enumerate(mols):
        smiles = assess(m, False).smiles
        if smiles is None or smiles in seen:
            hits[i] = False
        if smiles is not None:
            seen.add(smiles)
    if scored:
        out["hit_rate"] = float(hits.mean()) if len(mols) else 0.0
    return out


# ---------------------------------------------------------------------- EDM's conditional protocol
@dataclass
class ProtocolResult:
    """MAE rows of EDM's Table 3 for one property (user units) and what produced them.

    ``details`` are the numeric rows (logged as metrics); ``oracle_version`` is the
    :attr:`~molgen.oracle.PropertyOracle.version` of the oracle that scored every row.
    """

    prop: str
    rows: dict[str, float]
    n: int
    unusable: int
    details: dict[str, float] = field(default_factory=dict)
    oracle_version: str | None = None

    def table(self) -> str:
        unit, f = DISPLAY_UNITS.get(self.prop, (get_property(self.prop).unit, 1.0))
        lines = [f"| row | {self.prop} MAE ({unit}) |", "|---|---|"]
        lines += [f"| {name} | {value * f:.4g} |" for name, value in self.rows.items()]
        lines.append(f"| (model samples without coordinates, not scored) | {self.unusable} of {self.n} |")
        if self.oracle_version is not None:
            lines.append(f"| (scored by oracle version) | {self.oracle_version} |")
        return "\n".join(lines)


def _oracle_on_split(data, idx: torch.Tensor, oracle) -> np.ndarray:
    from molgen.oracle import oracle_outputs

    preds, _ = oracle_outputs(oracle, [data.molecule(i) for i in idx.tolist()])
    return preds


def edm_conditional(model, prop: str, *, n: int, seed: int = 0, steps: int | None = None,
                    guidance: float | None = None, oracle=None, baseline_n: int | None = None,
                    progress: bool = True, sample_opts: dict | None = None) -> ProtocolResult:
    """Run EDM's conditional protocol for ``prop`` on a generator trained on ``Db`` (see module docstring).

    ``sample_opts`` go to the family's ``sample`` (e.g. ``temperature``). Samples without coordinates
    (invalid strings or graphs that cannot be embedded) cannot be scored: the model's MAE is over the
    others and their number is a row of the table, never hidden.
    """
    return edm_conditional_oracles(model, prop, [oracle], n=n, seed=seed, steps=steps, guidance=guidance,
                                   baseline_n=baseline_n, progress=progress, sample_opts=sample_opts)[0]


def edm_conditional_oracles(model, prop: str, oracles: Sequence, *, n: int, seed: int = 0, steps: int | None = None,
                            guidance: float | None = None, baseline_n: int | None = None, progress: bool = True,
                            sample_opts: dict | None = None) -> list[ProtocolResult]:
    """:func:`edm_conditional` scored by each of ``oracles`` (None: the default one) on the same samples
    and the same baseline molecules: yardsticks side by side, one sampling."""
    from molgen.data.qm9 import edm_splits, load_qm9
    from molgen.oracle import load_oracle

    prop = get_property(prop).name
    if prop not in model.properties:
        supported = ", ".join(model.properties) or "none (unconditional model)"
        raise MolgenError(f"this run was not trained on '{prop}'; it supports: {supported}")
    if model.cfg.data.split != "db":
        print(f"warning: this run was trained on split '{model.cfg.data.split}', not 'db'; EDM's protocol "
              "trains the generator on Db (molgen train --split db) so that it never sees the oracle's Da",
              flush=True)
    oracles = [o if o is not None else load_oracle() for o in oracles]
    for oracle in oracles:
        if prop not in oracle.properties:
            raise MolgenError(f"the oracle does not predict '{prop}' (it predicts: {', '.join(oracle.properties)})")
    data = load_qm9(model.cfg.data.cache_dir)
    splits = edm_splits(data.num_molecules)
    da, db = splits["da"], splits["db"]
    rng = np.random.RandomState(seed)

    # generator: (N, target) pairs of random Db molecules = EDM's p(N) p(c | N)
    pick = torch.from_numpy(rng.randint(0, len(db), size=n)).long()
    n_atoms = data.n_atoms[db[pick]]
    targets = data.property(prop)[db[pick]].double().numpy()
    mols = model.sample(n, cond={prop: targets}, n_atoms=n_atoms, steps=steps, guidance=guidance, seed=seed,
                       progress=progress, **(sample_opts or {}))

    # baselines on real Db molecules (a random subset of baseline_n, default n), one draw for all oracles
    m = min(len(db), baseline_n or n)
    sub = db[torch.from_numpy(rng.permutation(len(db))[:m]).long()]
    true = data.property(prop)[sub].double().numpy()
    shuffle = rng.permutation(m)
    # #Atoms: mean property per atom count on Da, evaluated on the Db subset (no oracle)
    da_n, da_y = data.n_atoms[da].numpy(), data.property(prop)[da].double().numpy()
    per_n = {int(k): float(da_y[da_n == k].mean()) for k in np.unique(da_n)}
    fallback = float(da_y.mean())
    by_atoms = np.array([per_n.get(int(k), fallback) for k in data.n_atoms[sub].numpy()])
    n_atoms_mae = float(np.abs(by_atoms - true).mean())
    results = []
    for oracle in oracles:
        j = oracle.properties.index(prop)
        preds, _ = oracle_predict(mols, oracle)
        err = np.abs(preds[:, j] - targets)
        finite = np.isfinite(err)
        model_mae = float(err[finite].mean()) if finite.any() else float("nan")
        pred_db = _oracle_on_split(data, sub, oracle)[:, j]
        lower = float(np.abs(pred_db - true).mean())
        naive = float(np.abs(pred_db - true[shuffle]).mean())
        rows = {
            "Naive (shuffled labels, upper bound)": naive,
            "#Atoms": n_atoms_mae,
            f"molgen {model.name} ({model.cfg.data.split})": model_mae,
            "QM9 (oracle on real Db molecules, lower bound)": lower,
        }
        results.append(ProtocolResult(
            prop, rows, n=n, unusable=int((~finite).sum()),
            details={"model": model_mae, "naive": naive, "n_atoms": n_atoms_mae, "lower_bound": lower},
            oracle_version=oracle.version))
    return results
