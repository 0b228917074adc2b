"""Fréchet ChemNet Distance (FCD) and the Fréchet distance between two Gaussians.

FCD (Preuer et al., "Fréchet ChemNet Distance: A Metric for Generative Models for Molecules in
Drug Discovery", J. Chem. Inf. Model. 2018) is the Fréchet distance between Gaussians fitted to
the penultimate-layer activations (512-d) of ChemNet on two sets of canonical SMILES:

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).

ChemNet and its weights come from the ``fcd`` package (torch port by the original authors; the
weights ship inside its wheel, nothing is downloaded). MOSES used ``fcd_torch``, which loads the
same ``ChemNet_v0.13_pretrained.pt`` and encodes SMILES the same way (one-hot over a 35-token
vocabulary, an end token ``.``, zero padding to 350 positions, values divided by 35). Like
``fcd_torch`` (and unlike ``fcd``, which pads a whole set to its longest SMILES), a SMILES longer
than 349 tokens is truncated, so one long SMILES cannot change every other molecule's activations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from molgen.errors import MolgenError
from molgen.metrics.references import FCDStats

#: ChemNet's input length (positions) and vocabulary, in ``fcd``'s index order.
PAD_LEN = 350
VOCAB: tuple[str, ...] = (
    "C", "N", "O", "H", "F", "Cl", "P", "B", "Br", "S", "I", "Si", "#", "(", ")", "+", "-",
    "1", "2", "3", "4", "5", "6", "7", "8", "=", "[", "]", "@", "c", "n", "o", "s", "X", ".",
)  # fmt: skip
_INDEX = {token: i for i, token in enumerate(VOCAB)}
_UNK = _INDEX["X"]
_END = _INDEX["."]
# Longest tokens first, then any single character (unknown ones map to "X").
_TOKEN_RE = re.compile(
    "|".join(re.escape(t) for t in sorted(sorted(VOCAB), key=len, reverse=True)) + "|."
)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``Tr((S1 S2)^{1/2})`` is computed as ``sum sqrt(eig(A S2 A))`` with ``A = S1^{1/2}`` from a
    symmetric eigendecomposition: ``A S2 A`` is symmetric positive semi-definite and similar to
    ``S1 S2``, so this is exact in exact arithmetic and, unlike ``scipy.linalg.sqrtm(S1 @ S2)``,
    never produces an imaginary part; round-off negative eigenvalues are clipped to 0.

    Args:
        mu1, mu2: ``[d]`` means.
        sigma1, sigma2: ``[d, d]`` covariances (symmetric positive semi-definite).

    Returns:
        The distance (>= 0 up to round-off), as a Python float.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}"
        )
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def tokenize(smiles: str) -> list[str]:
    """ChemNet tokens of a SMILES (``Cl``, ``Br``, ``Si`` are one token; others one character)."""
    return _TOKEN_RE.findall(smiles)


def encode(smiles: Sequence[str]) -> np.ndarray:
    """ChemNet input ``[n, 350, 35]`` float32: one-hot tokens + end token, zero padded, / 35."""
    out = np.zeros((len(smiles), PAD_LEN, len(VOCAB)), np.float32)
    rows: list[int] = []
    cols: list[int] = []
    toks: list[int] = []
    for i, s in enumerate(smiles):
        ids = [_INDEX.get(t, _UNK) for t in tokenize(s)][: PAD_LEN - 1] + [_END]
        rows += [i] * len(ids)
        cols += range(len(ids))
        toks += ids
    out[rows, cols, toks] = 1.0 / len(VOCAB)
    return out


@lru_cache(maxsize=1)
def chemnet():
    """ChemNet from the ``fcd`` package (weights inside its wheel), in eval mode on the CPU."""
    try:
        from fcd import load_ref_model
    except ImportError:
        raise MolgenError("FCD needs the fcd package: pip install fcd") from None
    return load_ref_model()


def chemnet_activations(
    smiles: Sequence[str], *, batch_size: int = 512, device: str | None = None
) -> np.ndarray:
    """ChemNet's penultimate activations ``[n, 512]`` float32 of (canonical) SMILES.

    Args:
        smiles: SMILES as ChemNet should read them; pass RDKit canonical SMILES (as MOSES does).
        batch_size: molecules per forward pass.
        device: torch device; default CUDA when available, else CPU.
    """
    import torch

    model = chemnet()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = np.zeros((len(smiles), 512), np.float32)
    model.to(device)
    try:
        with torch.inference_mode():
            for i in range(0, len(smiles), batch_size):
                x = torch.from_numpy(encode(smiles[i : i + batch_size])).to(device)
                out[i : i + len(x)] = model(x.transpose(1, 2)).float().cpu().numpy()
    finally:
        model.to("cpu")
    return out


def fcd_stats(smiles: Sequence[str], **kwargs) -> FCDStats:
    """Mean and covariance of :func:`chemnet_activations` (keyword arguments passed on).

    Raises:
        ValueError: with fewer than 2 molecules (no covariance).
    """
    if len(smiles) < 2:
        raise ValueError(f"FCD needs at least 2 molecules, got {len(smiles)}")
    act = chemnet_activations(smiles, **kwargs).astype(np.float64)
    return FCDStats(mu=act.mean(0), sigma=np.cov(act, rowvar=False))


def fcd(gen: Sequence[str] | FCDStats, ref: Sequence[str] | FCDStats, **kwargs) -> float:
    """FCD between two sets given as canonical SMILES or precomputed :class:`FCDStats`."""
    g = gen if isinstance(gen, FCDStats) else fcd_stats(gen, **kwargs)
    r = ref if isinstance(ref, FCDStats) else fcd_stats(ref, **kwargs)
    return frechet_distance(g.mu, g.sigma, r.mu, r.sigma)
