"""The full MOSES metric suite: :func:`moses_metrics` returns MOSES's ``get_all_metrics`` dict.

Reference: Polykovskiy et al., "Molecular Sets (MOSES): A Benchmarking Platform for Molecular
Generation Models", Frontiers in Pharmacology 2020 (``moses/metrics/metrics.py``); FCD: Preuer
et al., J. Chem. Inf. Model. 2018.

As in MOSES, ``valid`` is measured on all inputs and every other metric on the canonical SMILES
of the valid ones (duplicates kept, except where a metric dedupes: unique@k, Novelty). The
reference side (test / scaffold-test statistics) is by default MOSES's own precomputed statistics
shipped in the molsets wheel, i.e. exactly what MOSES's published numbers were computed against;
``precomputed=False`` recomputes them from the SMILES with the installed RDKit and ChemNet.
Either way they are cached on disk (``<cache>/moses_reference/``) under a hash of their source.

Cost for 30,000 SMILES on 2 shared AMD EPYC cores, ``n_jobs=2``: ~3 min in all (RDKit features
~75 s, ChemNet ~70 s, SNN against the two 176k test sets ~30 s with the numba popcount kernel,
reference statistics ~2 s from the cache), ~1.1 GB peak RSS.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase

from molgen.errors import MolgenError
from molgen.metrics import moses as M
from molgen.metrics.references import (
    FCDStats,
    load_moses_precomputed,
    load_moses_split,
    moses_stats_path,
)

logger = logging.getLogger(__name__)

#: Bump when the cached reference statistics change meaning.
CACHE_VERSION = "1"
#: The keys of :func:`moses_metrics`, in MOSES's order.
MOSES_KEYS: tuple[str, ...] = (
    "valid", "unique@1000", "unique@10000",
    "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test",
    "FCD/TestSF", "SNN/TestSF", "Frag/TestSF", "Scaf/TestSF",
    "IntDiv", "IntDiv2", "Filters", "logP", "SA", "QED", "weight", "Novelty",
)  # fmt: skip


# ----------------------------------------------------------------------------- generated side


@dataclass
class SetFeatures:
    """What the MOSES metrics need from one set of molecules, computed in one pass.

    Attributes:
        n_input: number of inputs (valid or not).
        canonical: canonical SMILES of the valid inputs, in input order (duplicates kept).
        fps: ``[n, 16]`` uint64 packed Morgan fingerprints of the valid molecules (``n`` can be
            below ``len(canonical)`` only for a canonical SMILES RDKit cannot read back).
        fragments: BRICS fragment counts.
        scaffolds: scaffold counts (>= 2 rings).
        properties: name -> ``[n]`` float64 values (names: ``moses.PROPERTY_NAMES``).
        passes_filters: ``[n]`` bool, or ``None`` when not computed.
    """

    n_input: int
    canonical: list[str]
    fps: np.ndarray
    fragments: Counter = field(default_factory=Counter)
    scaffolds: Counter = field(default_factory=Counter)
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    passes_filters: np.ndarray | None = None

    @property
    def valid(self) -> float:
        """Fraction of the inputs that are valid."""
        return len(self.canonical) / self.n_input if self.n_input else float("nan")


def _features_chunk(args: tuple[list[str], bool]) -> SetFeatures:
    """Worker: features of the valid molecules among ``smiles``. Each molecule is re-read from
    its canonical SMILES, as MOSES does (it scores ``get_mol(canonic_smiles(s))``)."""
    smiles, with_filters = args
    canonical: list[str] = []
    bits: list[np.ndarray] = []
    frags: Counter = Counter()
    scafs: Counter = Counter()
    props: dict[str, list[float]] = {name: [] for name in M.PROPERTY_NAMES}
    mols: list[Chem.Mol] = []
    with M.quiet_rdkit():
        for s in smiles:
            can = M.canonical_smiles(s)
            if can is None:
                continue
            canonical.append(can)
            mol = Chem.MolFromSmiles(can)
            if mol is None:  # RDKit cannot read back its own SMILES (MOSES would crash here)
                logger.warning("skipping %s: RDKit cannot parse its canonical SMILES", can)
                continue
            bits.append(M.morgan_bits(mol))
            frags.update(M.fragments(mol))
            scaf = M.scaffold(mol)
            if scaf is not None:
                scafs[scaf] += 1
            lp = M.logp(mol)
            props["logP"].append(lp)
            props["SA"].append(M.sa(mol))
            props["QED"].append(M.qed_reusing_logp(mol, lp))
            props["weight"].append(M.weight(mol))
            mols.append(mol)
        filters = M.filter_flags(mols) if with_filters else None
    return SetFeatures(
        n_input=len(smiles),
        canonical=canonical,
        fps=M.pack_fingerprints(np.array(bits, np.uint8).reshape(len(bits), M.FP_BITS)),
        fragments=frags,
        scaffolds=scafs,
        properties={k: np.asarray(v, np.float64) for k, v in props.items()},
        passes_filters=filters,
    )


def compute_features(
    smiles: Sequence[str], *, n_jobs: int = 1, filters: bool = True, chunk_size: int = 2000
) -> SetFeatures:
    """One pass over a set: validity, canonical SMILES, fingerprints, fragments, scaffolds,
    logP/SA/QED/weight and (optionally) filter flags.

    Args:
        smiles: SMILES strings (RDKit molecules are written to SMILES first).
        n_jobs: worker processes. They are spawned (safe after torch / numba started threads),
            so a script calling this with ``n_jobs > 1`` needs the usual
            ``if __name__ == "__main__":`` guard.
        filters: also evaluate the MOSES filters.
        chunk_size: molecules per worker task.
    """
    items = [s if isinstance(s, str) else Chem.MolToSmiles(s) for s in smiles]
    chunks = [(items[i : i + chunk_size], filters) for i in range(0, len(items), chunk_size)]
    if not chunks:
        chunks = [([], filters)]
    if n_jobs > 1 and len(chunks) > 1:
        with multiprocessing.get_context("spawn").Pool(min(n_jobs, len(chunks))) as pool:
            parts = pool.map(_features_chunk, chunks)
    else:
        parts = [_features_chunk(c) for c in chunks]
    out = SetFeatures(
        n_input=sum(p.n_input for p in parts),
        canonical=[s for p in parts for s in p.canonical],
        fps=np.concatenate([p.fps for p in parts]),
        properties={k: np.concatenate([p.properties[k] for p in parts]) for k in M.PROPERTY_NAMES},
        passes_filters=np.concatenate([p.passes_filters for p in parts]) if filters else None,
    )
    for p in parts:
        out.fragments.update(p.fragments)
        out.scaffolds.update(p.scaffolds)
    return out


# ----------------------------------------------------------------------------- reference side


@dataclass
class ReferenceStats:
    """Reference-side statistics of one set (MOSES's ``compute_intermediate_statistics``).

    Attributes:
        fps: ``[n, 16]`` uint64 packed Morgan fingerprints.
        fragments / scaffolds: counts.
        properties: name -> ``[n]`` float64 values.
        fcd: ChemNet statistics, or ``None`` when not computed.
    """

    fps: np.ndarray
    fragments: Counter
    scaffolds: Counter
    properties: dict[str, np.ndarray]
    fcd: FCDStats | None = None

    def to_bytes(self) -> bytes:
        """Serialize as an ``.npz`` (no pickles)."""
        arrays: dict[str, np.ndarray] = {"fps": self.fps}
        for name, counter in (("frag", self.fragments), ("scaf", self.scaffolds)):
            keys = list(counter)
            arrays[f"{name}_keys"] = np.frombuffer("\n".join(keys).encode(), np.uint8)
            arrays[f"{name}_counts"] = np.array([counter[k] for k in keys], np.int64)
        for name, values in self.properties.items():
            arrays[f"prop_{name}"] = values
        if self.fcd is not None:
            arrays["fcd_mu"], arrays["fcd_sigma"] = self.fcd.mu, self.fcd.sigma
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> "ReferenceStats":
        """Read what :meth:`to_bytes` wrote."""
        with np.load(path, allow_pickle=False) as data:
            counters = []
            for name in ("frag", "scaf"):
                counts = data[f"{name}_counts"].tolist()
                keys = data[f"{name}_keys"].tobytes().decode().split("\n") if counts else []
                if len(keys) != len(counts):
                    raise ValueError(f"{len(keys)} {name} keys but {len(counts)} counts")
                counters.append(Counter(dict(zip(keys, counts))))
            props = {k[5:]: data[k] for k in data.files if k.startswith("prop_")}
            fcd = FCDStats(data["fcd_mu"], data["fcd_sigma"]) if "fcd_mu" in data.files else None
            return cls(data["fps"], counters[0], counters[1], props, fcd)


def _cache_path(cache_dir: str | Path | None, name: str, key: str) -> Path:
    from molgen.data.qm9 import resolve_cache_dir

    return resolve_cache_dir(cache_dir) / "moses_reference" / f"{name}-{key}.npz"


def _cached(path: Path, build) -> ReferenceStats:
    """Load ``path`` if it is a readable cache, else ``build()`` and write it atomically."""
    from molgen.io_utils import atomic_open

    if path.is_file():
        try:
            return ReferenceStats.from_file(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable cache %s (%s)", path, exc)
    stats = build()
    try:
        with atomic_open(path, "wb") as fh:
            fh.write(stats.to_bytes())
    except MolgenError as exc:  # an unwritable cache must not fail the metrics
        logger.warning("%s", exc)
    return stats


def moses_precomputed_stats(split: str, *, cache_dir: str | Path | None = None) -> ReferenceStats:
    """MOSES's precomputed statistics of ``test`` / ``test_scaffolds`` (what its published
    numbers used), converted to :class:`ReferenceStats` and cached under the npz file's hash."""
    source = moses_stats_path(split)
    key = hashlib.sha256(f"{CACHE_VERSION}:precomputed\n".encode() + source.read_bytes())
    path = _cache_path(cache_dir, f"{split}-precomputed", key.hexdigest()[:16])

    def build() -> ReferenceStats:
        raw = load_moses_precomputed(split)
        return ReferenceStats(
            fps=M.pack_fingerprints(raw["SNN"]["fps"]),
            fragments=Counter(raw["Frag"]["frag"]),
            scaffolds=Counter(raw["Scaf"]["scaf"]),
            properties={n: np.asarray(raw[n]["values"], np.float64) for n in M.PROPERTY_NAMES},
            fcd=FCDStats(
                np.asarray(raw["FCD"]["mu"], np.float64),
                np.asarray(raw["FCD"]["sigma"], np.float64),
            ),
        )

    return _cached(path, build)


def reference_stats(
    smiles: Sequence[str],
    *,
    name: str = "reference",
    with_fcd: bool = True,
    n_jobs: int = 1,
    cache_dir: str | Path | None = None,
    device: str | None = None,
) -> ReferenceStats:
    """Reference statistics computed from SMILES with the installed RDKit (and ChemNet when
    ``with_fcd``), cached under a hash of the SMILES, the RDKit version and this format.

    Invalid reference SMILES are dropped, as MOSES's ``fingerprints``/``get_mol`` would.
    """
    h = hashlib.sha256(f"{CACHE_VERSION}:{rdBase.rdkitVersion}:fcd={with_fcd}\n".encode())
    h.update("\n".join(smiles).encode())
    path = _cache_path(cache_dir, name, h.hexdigest()[:16])

    def build() -> ReferenceStats:
        logger.info("computing reference statistics of %d molecules (then cached)", len(smiles))
        feats = compute_features(smiles, n_jobs=n_jobs, filters=False)
        fcd = None
        if with_fcd:
            from molgen.metrics.fcd import fcd_stats

            fcd = fcd_stats(feats.canonical, device=device)
        return ReferenceStats(feats.fps, feats.fragments, feats.scaffolds, feats.properties, fcd)

    return _cached(path, build)


@lru_cache(maxsize=1)
def train_set() -> frozenset[str]:
    """MOSES's training SMILES as a set (for Novelty), read once."""
    return frozenset(load_moses_split("train"))


# ----------------------------------------------------------------------------- the suite


def score_against(
    gen: SetFeatures, ref: ReferenceStats, gen_fcd: FCDStats | None = None
) -> dict[str, float]:
    """FCD (when both sides have ChemNet stats), SNN, Frag, Scaf and the property distances of
    ``gen`` against one reference."""
    out: dict[str, float] = {}
    if gen_fcd is not None and ref.fcd is not None:
        from molgen.metrics.fcd import frechet_distance

        out["FCD"] = frechet_distance(gen_fcd.mu, gen_fcd.sigma, ref.fcd.mu, ref.fcd.sigma)
    out["SNN"] = M.snn(gen.fps, ref.fps)
    out["Frag"] = M.cos_similarity(ref.fragments, gen.fragments)
    out["Scaf"] = M.cos_similarity(ref.scaffolds, gen.scaffolds)
    for name in M.PROPERTY_NAMES:
        out[name] = M.wasserstein(ref.properties[name], gen.properties[name])
    return out


def moses_metrics(
    smiles: Sequence[str],
    *,
    n_jobs: int = 1,
    precomputed: bool = True,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """MOSES's ``get_all_metrics`` for generated SMILES against the MOSES reference.

    Args:
        smiles: generated SMILES (invalid ones included: they count against ``valid``).
        n_jobs: worker processes for the RDKit part (ChemNet and the Tanimoto kernels use their
            own thread pools); see :func:`compute_features` for the ``__main__`` guard.
        precomputed: use MOSES's precomputed test statistics (default, the published protocol);
            ``False`` recomputes them with the installed RDKit / ChemNet (slow once, then cached).
        cache_dir: cache folder; default :func:`molgen.data.qm9.resolve_cache_dir`.
        device: torch device for ChemNet (default CUDA if available).
        timings: if given, filled with seconds per stage.

    Returns:
        The keys of :data:`MOSES_KEYS`, in that order, as floats.

    Raises:
        MolgenError: if no input is a valid molecule, or molsets is not installed.
    """
    from molgen.metrics.fcd import fcd_stats

    clock = _Clock(timings)
    gen = compute_features(smiles, n_jobs=n_jobs)
    clock("features")
    if len(gen.canonical) < 2:
        raise MolgenError(f"only {len(gen.canonical)} of {len(smiles)} SMILES are valid molecules")
    out: dict[str, float] = {"valid": gen.valid}
    with M.quiet_rdkit():  # fewer than k valid molecules: MOSES's warning, then all of them
        for k in (1000, 10000):
            out[f"unique@{k}"] = M.fraction_unique(gen.canonical, k)  # canonical: cheap re-parse
    clock("unique")
    gen_fcd = fcd_stats(gen.canonical, device=device)
    clock("chemnet")
    results = {}
    for suffix, split in (("Test", "test"), ("TestSF", "test_scaffolds")):
        if precomputed:
            ref = moses_precomputed_stats(split, cache_dir=cache_dir)
        else:
            ref = reference_stats(
                load_moses_split(split),
                name=split,
                n_jobs=n_jobs,
                cache_dir=cache_dir,
                device=device,
            )
        clock(f"reference {split}")
        results[suffix] = score_against(gen, ref, gen_fcd)
        clock(f"score {split}")
    for key in ("FCD", "SNN", "Frag", "Scaf"):
        for suffix in ("Test", "TestSF"):
            out[f"{key}/{suffix}"] = results[suffix][key]
    out["IntDiv"], out["IntDiv2"] = M.internal_diversities(gen.fps)
    clock("intdiv")
    out["Filters"] = float(np.mean(gen.passes_filters))
    for name in M.PROPERTY_NAMES:
        out[name] = results["Test"][name]
    out["Novelty"] = len(set(gen.canonical) - train_set()) / len(set(gen.canonical))
    clock("novelty")
    return {key: float(out[key]) for key in MOSES_KEYS}


class _Clock:
    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now
