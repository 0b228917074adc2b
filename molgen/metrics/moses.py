"""The MOSES metric set on SMILES / RDKit molecules (except FCD: :mod:`molgen.metrics.fcd`).

Same definitions as MOSES (``moses/metrics/metrics.py`` and ``utils.py``); reference:
Polykovskiy et al., "Molecular Sets (MOSES): A Benchmarking Platform for Molecular Generation
Models", Frontiers in Pharmacology 2020.

- valid: fraction of SMILES that RDKit parses and sanitizes;
- unique@k: distinct canonical SMILES among the first ``k`` valid molecules / ``k``;
- Novelty: distinct valid canonical SMILES not in the training set / distinct valid;
- SNN: mean over generated molecules of the max Tanimoto similarity to the reference
  (Morgan radius 2, 1,024 bits);
- Frag / Scaf: cosine similarity of BRICS-fragment / Bemis–Murcko-scaffold (≥ 2 rings) counts;
- IntDiv_p: ``1 - mean_i (mean_j T_ij^p)^(1/p)`` over all ordered pairs of generated molecules
  (self-pairs included), p = 1 and 2;
- Filters: fraction with no MCF / PAINS alert, only C N S O F Cl Br H, no charges, no ring of
  8 or more atoms;
- logP / SA / QED / weight: Wasserstein-1 distances of the property distributions.

Fingerprints and the Tanimoto metrics (SNN, IntDiv) live here. The rest lives in sibling modules
and is importable from here too: parsing, valid, unique@k and Novelty in
:mod:`~molgen.metrics.moses_validity`; Frag / Scaf in :mod:`~molgen.metrics.moses_fragments`;
Filters in :mod:`~molgen.metrics.moses_filters`; the property distances in
:mod:`~molgen.metrics.moses_properties`.

Fingerprints are bit-packed (``[n, 16]`` uint64). Tanimoto scans run in a multithreaded numba
kernel (popcount of ``a & b``, ~3–7 ns per pair on one x86 core) when numba is installed, else in
chunked float32 matrix products (intersection = ``A @ B.T``) with torch; both are exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Callable

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from molgen.metrics.moses_filters import (
    ALLOWED_ATOMS,
    filter_flags,
    fraction_passes_filters,
    passes_filters,
    substructure_hits,
)
from molgen.metrics.moses_fragments import (
    compute_fragments,
    compute_scaffolds,
    cos_similarity,
    fragments,
    scaffold,
)
from molgen.metrics.moses_properties import (
    PROPERTIES,
    PROPERTY_NAMES,
    logp,
    qed,
    qed_reusing_logp,
    sa,
    wasserstein,
    weight,
)
from molgen.metrics.moses_validity import (
    MolLike,
    canonical_smiles,
    fraction_unique,
    fraction_valid,
    get_mol,
    novelty,
    quiet_rdkit,
    remove_invalid,
)

__all__ = [
    "ALLOWED_ATOMS", "FP_BITS", "FP_RADIUS", "FP_WORDS", "PROPERTIES", "PROPERTY_NAMES", "MolLike",
    "canonical_smiles", "compute_fragments", "compute_scaffolds", "cos_similarity", "filter_flags",
    "fingerprints", "fraction_passes_filters", "fraction_unique", "fraction_valid", "fragments",
    "get_mol", "internal_diversities", "internal_diversity", "logp", "max_tanimoto", "morgan_bits",
    "novelty", "pack_fingerprints", "passes_filters", "popcounts", "qed", "qed_reusing_logp",
    "quiet_rdkit", "remove_invalid", "sa", "scaffold", "snn", "substructure_hits", "wasserstein",
    "weight",
]  # fmt: skip


#: Morgan fingerprint of MOSES's SNN / IntDiv: radius 2, 1,024 bits.
FP_RADIUS = 2
FP_BITS = 1024
FP_WORDS = FP_BITS // 64


# ----------------------------------------------------------------------------- fingerprints


@lru_cache(maxsize=1)
def _morgan_generator() -> rdFingerprintGenerator.FingerprintGenerator64:
    return rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)


def morgan_bits(mol: Chem.Mol) -> np.ndarray:
    """``[1024]`` uint8 0/1 Morgan bits (radius 2), equal to RDKit's
    ``GetMorganFingerprintAsBitVect(mol, 2, nBits=1024)`` that MOSES used."""
    return _morgan_generator().GetFingerprintAsNumPy(mol).astype(np.uint8, copy=False)


def pack_fingerprints(bits: np.ndarray) -> np.ndarray:
    """``[n, 1024]`` 0/1 array -> ``[n, 16]`` uint64 (bit order irrelevant to Tanimoto)."""
    bits = np.asarray(bits)
    if bits.ndim != 2 or bits.shape[1] != FP_BITS:
        raise ValueError(f"expected an [n, {FP_BITS}] bit array, got shape {bits.shape}")
    packed = np.packbits(bits.astype(bool, copy=False), axis=1)
    return np.ascontiguousarray(packed).view(np.uint64)


def fingerprints(mols: Sequence[MolLike]) -> np.ndarray:
    """Packed Morgan fingerprints ``[n, 16]`` uint64 of valid molecules.

    Raises:
        ValueError: if an input is not a valid molecule.
    """
    rows = np.zeros((len(mols), FP_BITS), np.uint8)
    for i, m in enumerate(mols):
        mol = get_mol(m)
        if mol is None:
            raise ValueError(f"invalid molecule at index {i}")
        rows[i] = morgan_bits(mol)
    return pack_fingerprints(rows)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def popcounts(fps: np.ndarray) -> np.ndarray:
    """Number of set bits per packed fingerprint, ``[n]`` int64."""
    as_bytes = np.ascontiguousarray(fps).view(np.uint8)
    return _POPCOUNT8[as_bytes].sum(axis=1, dtype=np.int64)


# Tanimoto kernels. T(a, b) = |a & b| / (|a| + |b| - |a & b|), with 0/0 := 1 as in MOSES.
# They are module-level functions so that numba's on-disk cache (``cache=True``) can reuse the
# compiled code across processes (closures are recompiled every time: ~3 s per kernel).

try:
    import numba as _numba
except ImportError:  # the torch fallback below is exact too, ~10x slower on a CPU
    _numba = None

if _numba is not None:
    _u64 = np.uint64

    @_numba.njit(inline="always", cache=True)
    def _popcount(x):  # pragma: no cover - compiled; LLVM emits POPCNT for this idiom
        x = x - ((x >> _u64(1)) & _u64(0x5555555555555555))
        x = (x & _u64(0x3333333333333333)) + ((x >> _u64(2)) & _u64(0x3333333333333333))
        x = (x + (x >> _u64(4))) & _u64(0x0F0F0F0F0F0F0F0F)
        return (x * _u64(0x0101010101010101)) >> _u64(56)

    @_numba.njit(inline="always", cache=True)
    def _better(t, u, bt, bu):  # pragma: no cover - compiled
        # the larger of t/u and bt/bu, kept as a fraction; 0/0 counts as 1
        if u == 0:
            t, u = 1, 1
        if t * bu > bt * u:
            return t, u
        return bt, bu

    @_numba.njit(inline="always", cache=True)
    def _ratio(t, u):  # pragma: no cover - compiled
        return 1.0 if u == 0 else t / u

    # Queries are processed four at a time so that each reference row is loaded once per four
    # queries; callers pad the query count to a multiple of 4.
    @_numba.njit(parallel=True, cache=True)
    def _max_tanimoto_kernel(q, qc, r, rc):  # pragma: no cover - compiled
        w = q.shape[1]
        out = np.zeros(q.shape[0])
        for b in _numba.prange(q.shape[0] // 4):
            i = 4 * b
            t0, u0, t1, u1, t2, u2, t3, u3 = 0, 1, 0, 1, 0, 1, 0, 1
            for j in range(r.shape[0]):
                s0 = s1 = s2 = s3 = _u64(0)
                for k in range(w):
                    x = r[j, k]
                    s0 += _popcount(q[i, k] & x)
                    s1 += _popcount(q[i + 1, k] & x)
                    s2 += _popcount(q[i + 2, k] & x)
                    s3 += _popcount(q[i + 3, k] & x)
                c = rc[j]
                a = np.int64(s0)
                t0, u0 = _better(a, qc[i] + c - a, t0, u0)
                a = np.int64(s1)
                t1, u1 = _better(a, qc[i + 1] + c - a, t1, u1)
                a = np.int64(s2)
                t2, u2 = _better(a, qc[i + 2] + c - a, t2, u2)
                a = np.int64(s3)
                t3, u3 = _better(a, qc[i + 3] + c - a, t3, u3)
            out[i], out[i + 1], out[i + 2], out[i + 3] = t0 / u0, t1 / u1, t2 / u2, t3 / u3
        return out

    @_numba.njit(parallel=True, cache=True)
    def _sum_tanimoto_kernel(q, qc, r, rc):  # pragma: no cover - compiled
        w = q.shape[1]
        s1 = np.zeros(q.shape[0])
        s2 = np.zeros(q.shape[0])
        for b in _numba.prange(q.shape[0] // 4):
            i = 4 * b
            a0 = a1 = a2 = a3 = 0.0
            b0 = b1 = b2 = b3 = 0.0
            for j in range(r.shape[0]):
                x0 = x1 = x2 = x3 = _u64(0)
                for k in range(w):
                    x = r[j, k]
                    x0 += _popcount(q[i, k] & x)
                    x1 += _popcount(q[i + 1, k] & x)
                    x2 += _popcount(q[i + 2, k] & x)
                    x3 += _popcount(q[i + 3, k] & x)
                c = rc[j]
                v = _ratio(np.int64(x0), qc[i] + c - np.int64(x0))
                a0 += v
                b0 += v * v
                v = _ratio(np.int64(x1), qc[i + 1] + c - np.int64(x1))
                a1 += v
                b1 += v * v
                v = _ratio(np.int64(x2), qc[i + 2] + c - np.int64(x2))
                a2 += v
                b2 += v * v
                v = _ratio(np.int64(x3), qc[i + 3] + c - np.int64(x3))
                a3 += v
                b3 += v * v
            s1[i], s1[i + 1], s1[i + 2], s1[i + 3] = a0, a1, a2, a3
            s2[i], s2[i + 1], s2[i + 2], s2[i + 3] = b0, b1, b2, b3
        return s1, s2


def _numba_kernels() -> tuple[Callable, Callable] | None:
    """(max, sum) Tanimoto kernels, or ``None`` without numba (tests patch this)."""
    return None if _numba is None else (_max_tanimoto_kernel, _sum_tanimoto_kernel)


def _pad4(q: np.ndarray) -> np.ndarray:
    pad = (-len(q)) % 4
    q = np.ascontiguousarray(q, dtype=np.uint64)
    return np.concatenate([q, np.zeros((pad, q.shape[1]), np.uint64)]) if pad else q


def _torch_tanimoto_blocks(
    q: np.ndarray, r: np.ndarray, q_chunk: int = 2048, r_chunk: int = 8192
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(i0, i1, T)``: ``T`` is the float32 Tanimoto block of queries ``i0:i1`` against
    one chunk of ``r``, for every query chunk and reference chunk (the no-numba path)."""
    import torch

    def unpack(x: np.ndarray) -> "torch.Tensor":
        bits = np.unpackbits(np.ascontiguousarray(x).view(np.uint8), axis=1)
        return torch.from_numpy(bits).float()

    for i in range(0, len(q), q_chunk):
        qb = unpack(q[i : i + q_chunk])
        qc = qb.sum(1, keepdim=True)
        for j in range(0, len(r), r_chunk):
            rb = unpack(r[j : j + r_chunk])
            inter = qb @ rb.T  # exact: integer counts <= 1024 in float32
            t = inter / (qc + rb.sum(1)[None, :] - inter)
            yield i, i + len(qb), torch.nan_to_num(t, nan=1.0).numpy()


def max_tanimoto(query_fps: np.ndarray, ref_fps: np.ndarray) -> np.ndarray:
    """Per query fingerprint, the max Tanimoto similarity to any reference fingerprint.

    Args:
        query_fps: ``[n, 16]`` uint64 packed fingerprints (see :func:`pack_fingerprints`).
        ref_fps: ``[m, 16]`` uint64 packed fingerprints, ``m >= 1``.

    Returns:
        ``[n]`` float64.
    """
    if len(ref_fps) == 0:
        raise ValueError("empty reference set")
    if len(query_fps) == 0:
        return np.zeros(0)
    kernels = _numba_kernels()
    if kernels is not None:
        q = _pad4(query_fps)
        r = np.ascontiguousarray(ref_fps, dtype=np.uint64)
        return kernels[0](q, popcounts(q), r, popcounts(r))[: len(query_fps)]
    out = np.zeros(len(query_fps))
    for i0, i1, t in _torch_tanimoto_blocks(query_fps, ref_fps):
        out[i0:i1] = np.maximum(out[i0:i1], t.max(1))
    return out


def snn(gen_fps: np.ndarray, ref_fps: np.ndarray) -> float:
    """SNN: mean over generated molecules of the max Tanimoto similarity to the reference."""
    return float(np.mean(max_tanimoto(gen_fps, ref_fps))) if len(gen_fps) else float("nan")


def internal_diversities(fps: np.ndarray) -> tuple[float, float]:
    """(IntDiv, IntDiv2) of one set, from a single pass over all ordered pairs.

    ``IntDiv_p = 1 - mean_i (mean_j T_ij^p)^(1/p)`` with ``j`` over the whole set including ``i``
    (MOSES ``internal_diversity`` with ``agg='mean'``).
    """
    n = len(fps)
    if n == 0:
        return float("nan"), float("nan")
    kernels = _numba_kernels()
    if kernels is not None:
        q = _pad4(fps)
        r = np.ascontiguousarray(fps, dtype=np.uint64)
        s1, s2 = kernels[1](q, popcounts(q), r, popcounts(r))
        s1, s2 = s1[:n], s2[:n]
    else:
        s1, s2 = np.zeros(n), np.zeros(n)
        for i0, i1, t in _torch_tanimoto_blocks(fps, fps):
            t64 = t.astype(np.float64)
            s1[i0:i1] += t64.sum(1)
            s2[i0:i1] += (t64 * t64).sum(1)
    return float(1 - np.mean(s1 / n)), float(1 - np.mean(np.sqrt(s2 / n)))


def internal_diversity(fps: np.ndarray, p: int = 1) -> float:
    """IntDiv (``p=1``) or IntDiv2 (``p=2``); see :func:`internal_diversities`."""
    if p not in (1, 2):
        raise ValueError("p must be 1 or 2")
    return internal_diversities(fps)[p - 1]
