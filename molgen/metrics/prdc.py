"""Fidelity and diversity apart: precision / recall and density / coverage with k-NN balls.

For a real (reference) set ``X`` ``[n, d]`` and a fake (sample) set ``Y`` ``[m, d]``, with
``r_k(x)`` the distance from ``x`` to its k-th nearest neighbour in its own set (itself not
counted) and ``B(x, r)`` the open ball ``{z : ||z - x|| < r}``:

- **precision** (Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing
  Generative Models", NeurIPS 2019): the fraction of fake points inside some real ball
  ``B(x_i, r_k(x_i))`` — how much of the samples looks real (fidelity);
- **recall** (same paper): the fraction of real points inside some fake ball
  ``B(y_j, r_k(y_j))`` — how much of the reference the samples reach (diversity);
- **density** (Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models",
  ICML 2020): ``1/(k m) Σ_j #{i : y_j ∈ B(x_i, r_k(x_i))}`` — precision counting how many real
  balls hold each sample, robust to real outliers; its expectation is 1 when ``Y`` and ``X``
  come from one distribution, and it can exceed 1;
- **coverage** (same paper): the fraction of real balls ``B(x_i, r_k(x_i))`` that hold at least
  one fake point — recall built from real balls only, robust to fake outliers; for identical
  distributions it tends to ``1 - 2^-k`` (0.969 for ``k = 5``) as ``n = m`` grows.

Strict inequalities and the k-th neighbour excluding the point itself follow the authors' code
(``clovaai/generative-evaluation-prdc``). ``k = 5`` by default, as both papers recommend. Recall
and coverage depend on the set sizes; compare runs with the same numbers of samples.

:func:`prdc` is the pure function on two feature matrices (torch float64, pairwise distances in
row chunks, memory bounded for tens of thousands of points); :func:`prdc_emb` gives the
``molgen benchmark`` keys ``precision_emb``, ``recall_emb``, ``density_emb``, ``coverage_emb`` in
the property oracle's embedding space (:mod:`molgen.metrics.oracle_metrics`).
"""

from __future__ import annotations

import numpy as np
import torch

from molgen.metrics.embedding import _as_2d, _t

#: Nearest neighbours defining each ball (both papers' default).
DEFAULT_K = 5
#: Distance-matrix entries evaluated per chunk (4M float64 = 32 MB).
_CHUNK_ENTRIES = 1 << 22


def _chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ENTRIES // max(n_cols, 1))


def _sq_dists(A: torch.Tensor, a2: torch.Tensor, B: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """``[len(A), len(B)]`` squared distances ``|a|² + |b|² - 2 a·b`` from precomputed squared
    norms, in one fused matrix product (round-off may leave tiny negatives; only compared)."""
    return torch.addmm(b2[None, :], A, B.T, alpha=-2.0).add_(a2[:, None])


def knn_sq_radii(X: np.ndarray | torch.Tensor, k: int = DEFAULT_K) -> torch.Tensor:
    """``[n]`` squared distance from each row of ``X`` to its k-th nearest other row.

    Raises:
        ValueError: when ``X`` has ``k`` rows or fewer (no k-th neighbour).
    """
    Xt = X if isinstance(X, torch.Tensor) else _t(_as_2d(X, "X"))
    n = len(Xt)
    if not 1 <= k < n:
        raise ValueError(f"k-NN radii need 1 <= k < number of points, got k={k} for {n} points")
    x2 = (Xt * Xt).sum(1)
    out = torch.empty(n, dtype=torch.float64)
    step = _chunk(n)
    for i in range(0, n, step):
        d2 = _sq_dists(Xt[i : i + step], x2[i : i + step], Xt, x2)
        rows = torch.arange(len(d2))
        d2[rows, rows + i] = -np.inf  # the point itself: always the smallest, then dropped
        out[i : i + step] = d2.topk(k + 1, dim=1, largest=False).values[:, k]
    return out.clamp_(min=0.0)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` ``[m, d]`` against ``real`` ``[n, d]``.

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` (see the module doc for the formulas).

    Raises:
        ValueError: for mismatched dimensions or a set of ``k`` points or fewer.
    """
    X, Y = _as_2d(real, "real"), _as_2d(fake, "fake")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"feature dimensions differ: {X.shape[1]} vs {Y.shape[1]}")
    Xt, Yt = _t(X), _t(Y)
    r_real, r_fake = knn_sq_radii(Xt, k), knn_sq_radii(Yt, k)
    n, m = len(Xt), len(Yt)
    x2, y2 = (Xt * Xt).sum(1), (Yt * Yt).sum(1)
    precise = in_balls = 0
    recalled = torch.zeros(n, dtype=torch.bool)
    nearest = torch.full((n,), float("inf"), dtype=torch.float64)
    step = _chunk(n)
    for j in range(0, m, step):
        d2 = _sq_dists(Xt, x2, Yt[j : j + step], y2[j : j + step])  # [n, c]
        balls = (d2 < r_real[:, None]).sum(0)  # [c] real balls holding each fake point
        precise += int((balls > 0).sum())
        in_balls += int(balls.sum())
        recalled |= (d2 < r_fake[None, j : j + step]).any(1)
        nearest = torch.minimum(nearest, d2.min(1).values)
    return {
        "precision": precise / m,
        "recall": float(recalled.double().mean()),
        "density": in_balls / (k * m),
        "coverage": float((nearest < r_real).double().mean()),
    }


def prdc_emb(samples, reference, k: int = DEFAULT_K) -> dict[str, float]:
    """``precision_emb``, ``recall_emb``, ``density_emb``, ``coverage_emb`` and ``oracle/unusable``
    for two :class:`~molgen.metrics.oracle_metrics.OracleFeatures` (samples, reference); rows the
    oracle could not embed are left out and counted. Fewer than ``k + 1`` usable molecules in a set:
    only ``oracle/unusable`` and a one-line warning on stderr."""
    import sys

    keep, ref_keep = samples.usable(), reference.usable()
    out: dict[str, float] = {"oracle/unusable": float((~keep).sum())}
    X, Y = reference.embeddings[ref_keep], samples.embeddings[keep]
    if len(X) <= k or len(Y) <= k:
        print(f"warning: precision/recall/density/coverage need more than k={k} usable molecules per set "
              f"(samples {len(Y)}, reference {len(X)}); skipped", file=sys.stderr)
        return out
    out.update({f"{name}_emb": value for name, value in prdc(X, Y, k).items()})
    return out
