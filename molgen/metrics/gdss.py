"""The 2D protocol of GDSS on QM9: validity without correction, uniqueness, novelty, FCD vs test.

Reference: Jo, Lee & Hwang, "Score-based Generative Modeling of Graphs via the System of
Stochastic Differential Equations", ICML 2022 (GDSS), ``sampler.py`` (``Sampler_mol``) and
``utils/mol_utils.py``; the protocol goes back to MoFlow (Zang & Wang, KDD 2020) and is reused by
DiGress and GruM. GDSS generates heavy-atom graphs (C, N, O, F, kekulized bonds), then

- *validity w/o correction*: the fraction of generated graphs whose RDKit molecule passes the
  valence check (``SanitizeMol`` with ``SANITIZE_PROPERTIES``) before any repair. Hydrogens are
  implicit, so an under-bonded atom is completed with hydrogens and is valid; only over-bonded atoms
  fail (GDSS first turns an N/O/S with exactly one bond too many into N+/O+/S+). A disconnected
  graph is valid;
- then every graph is *corrected* (the highest-order bond of an over-bonded atom lowered until the
  valence check passes) and reduced to its largest fragment (longest SMILES string), and MOSES's
  ``get_all_metrics`` scores the corrected molecules: ``unique@k`` over them, ``Novelty`` (distinct
  canonical SMILES not in the training SMILES / distinct), ``FCD/Test`` with ``fcd_torch`` between
  their canonical SMILES (duplicates kept) and the canonical SMILES of the test split;
- the QM9 split is MoFlow's ``valid_idx_qm9.json``: a random ~10 % (about 13,000) of the 133,885
  rows of ``qm9.csv`` (uncharacterized molecules included) are the test set, every other row is
  "train" for novelty. (The public ``Sampler_mol`` draws 3,000 graphs per run; molgen's design
  fixes 10,000 samples.)

molgen's definitions (:func:`gdss_metrics`), one per kind of input:

- a molecule with its own graph (:class:`~molgen.chem.elements.Molecule3D` with ``bonds``: the
  ``vae`` and ``smiles-ar`` families, hydrogens as atoms) is valid without correction when the
  model's own graph passes :func:`molgen.chem.build.sanitize_strict`: RDKit sanitization adds no
  hydrogen and every valence equals the charge-adjusted one. That is GDSS's check made exact for
  graphs that carry their hydrogens: a missing hydrogen is an error of the model here, where GDSS
  cannot tell (its graphs have none). ``validity_lenient`` is the GDSS-literal check on the same
  graph (implicit hydrogens allowed, only over-bonded atoms fail). Coordinates are not used;
- a 3D point cloud (``Molecule3D`` without ``bonds``): EDM's bonds inferred from the distances,
  then ``Chem.SanitizeMol`` (implicit hydrogens allowed: EDM's validity,
  :mod:`molgen.metrics.basic`); no coordinates: invalid;
- a SMILES string or an RDKit ``Mol``: RDKit parses / sanitizes it (SMILES semantics: atoms
  outside brackets get their implicit hydrogens). To judge a model's raw explicit-H strings
  strictly, pass its ``Molecule3D`` objects instead.

Every valid molecule is then written as the canonical, non-isomeric SMILES of its largest fragment
with hydrogens implicit (:func:`molgen.chem.build.largest_fragment_smiles`): explicit-H graphs are
compared as heavy-atom molecules, as GDSS's are. ``uniqueness`` is over the valid molecules,
``novelty`` over the distinct valid ones, ``fcd_test`` over the valid ones (duplicates kept), with
molgen's ChemNet FCD (:mod:`molgen.metrics.fcd`: ``fcd_torch``'s weights and encoding, checked
against MOSES's published numbers by ``scripts/reproduce_moses.py``). Differences from GDSS, all
forced by there being no correction step for molgen's models (an invalid SMILES has no graph to
repair): uniqueness, novelty and FCD are over the molecules valid *without* correction, where
GDSS scores all its corrected molecules (at 95 % validity, 5 % of its set are repaired graphs);
the largest fragment is the one with most atoms, not the longest string.

The test split: MoFlow/GDSS's index file is not part of molgen or its data, so
:func:`qm9_gdss_reference` uses EDM's QM9 test split (13,083 molecules, :func:`molgen.data.qm9.
edm_splits`; another random 10 % of QM9, of the same size) and every other molecule (EDM's train
and valid splits, 117,748) as the novelty reference, GDSS's "every row outside the test set".
How much a different random 10 % moves FCD is what a QM9 training sample scored the same way shows
(``scripts/gdss_report.py`` prints that row); FCD also grows as the sample shrinks, so compare
numbers at the same sample size (GDSS: 10,000).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rdkit import Chem
from rdkit.rdBase import BlockLogs

from molgen.chem.build import (build_mol, edm_bond_matrix, largest_fragment_smiles, num_fragments,
                               sanitize, sanitize_strict)
from molgen.chem.elements import Molecule3D
from molgen.metrics.references import FCDStats

logger = logging.getLogger(__name__)

#: What ``test_split`` says when :func:`qm9_gdss_reference` supplied the reference.
EDM_TEST_SPLIT = "QM9 test split of EDM (13,083 molecules; GDSS's own split is not available)"
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class Anchor:
    """A published result under this protocol (``../shared/ANCHORS.md``)."""

    model: str
    validity_wo_correction: float  # fraction
    fcd_test: float
    source: str


#: The published numbers molgen is compared with (fractions; FCD as published).
ANCHORS: tuple[Anchor, ...] = (
    Anchor("MoFlow (normalizing flow)", 0.9136, 4.47, "as reported by GDSS (Jo et al., ICML 2022)"),
    Anchor("GDSS (score-based)", 0.9572, 2.90, "GDSS paper (Jo et al., ICML 2022), QM9 table"),
    Anchor("DiGress (discrete diffusion)", 0.9819, 0.10,
           "as reprinted in later papers (e.g. GruM, Jo et al., ICML 2024)"),
)


@dataclass(frozen=True)
class Verdict:
    """One molecule: its heavy-atom identity when valid, why not, and the lenient verdict."""

    smiles: str | None
    reason: str | None
    valid_lenient: bool
    connected: bool


def _smiles_of(m: Chem.Mol) -> str:
    return largest_fragment_smiles(m)


def judge(item: Molecule3D | Chem.Mol | str | None) -> Verdict:
    """Valid without correction? (module docstring), with the canonical heavy-atom SMILES.

    Args:
        item: a :class:`Molecule3D` (own ``bonds``: strict validity of that graph; none: EDM's
            bonds from the positions), an RDKit molecule, a SMILES string, or ``None`` (invalid).
    """
    _block = BlockLogs()  # noqa: F841
    if item is None:
        return Verdict(None, "empty", False, False)
    if isinstance(item, Molecule3D):
        try:
            built = build_mol(item, np.asarray(item.bonds) if item.bonds is not None else edm_bond_matrix(item))
        except ValueError:  # a bond order outside 1..3 or a bond matrix of the wrong shape
            return Verdict(None, "other", False, False)
        if item.bonds is not None:
            strict, reason = sanitize_strict(built)
            lenient = strict if strict is not None else sanitize(built)[0]
        else:
            strict, reason = sanitize(built)
            lenient = strict
    elif isinstance(item, Chem.Mol):
        strict, reason = sanitize(item)
        lenient = strict
    elif isinstance(item, str):
        parsed = Chem.MolFromSmiles(item) if item.strip() else None
        if parsed is None or parsed.GetNumAtoms() == 0:
            return Verdict(None, "empty" if not item.strip() else "unparsable", False, False)
        strict, reason, lenient = parsed, None, parsed
    else:
        raise TypeError(f"cannot judge a {type(item).__name__}: give Molecule3D, rdkit Mol or SMILES")
    if strict is None:
        return Verdict(None, reason, lenient is not None, False)
    return Verdict(_smiles_of(strict), None, True, num_fragments(strict) == 1)


def _canonical(smiles: Iterable[str]) -> list[str]:
    """molgen's identity of reference SMILES (largest fragment, no stereo, H implicit); invalid dropped."""
    _block = BlockLogs()  # noqa: F841
    out = []
    for s in smiles:
        m = Chem.MolFromSmiles(s) if s else None
        if m is not None and m.GetNumAtoms():
            out.append(_smiles_of(m))
    return out


def gdss_metrics(
    smiles_or_mols: Sequence[Molecule3D | Chem.Mol | str | None],
    *,
    test_smiles: Sequence[str] | FCDStats | None,
    train_smiles: Iterable[str] | None,
    test_split: str = "given test SMILES",
    canonical_train: bool = False,
) -> dict[str, Any]:
    """The GDSS 2D protocol's numbers for a set of generated molecules (module docstring).

    Args:
        smiles_or_mols: the samples, every one of them (invalid ones count against validity):
            :class:`Molecule3D` (a model's output), RDKit molecules, SMILES strings, ``None``.
        test_smiles: the test split as SMILES (canonicalized here like the samples) or its
            precomputed ChemNet statistics; ``None``: no FCD.
        train_smiles: the training SMILES for novelty (canonicalized here unless
            ``canonical_train``); ``None``: no novelty.
        test_split: the name of the test split, copied into the result.
        canonical_train: ``train_smiles`` are already molgen identities
            (:func:`molgen.data.canonical.canonical_qm9_smiles`), skip canonicalizing them.

    Returns:
        ``n`` (samples), ``n_valid``, ``validity_wo_correction`` (valid / n), ``validity_lenient``
        (implicit hydrogens allowed, the GDSS-literal check), ``uniqueness`` (distinct / valid),
        ``novelty`` (distinct not in train / distinct; with ``train_smiles``), ``fcd_test`` (valid
        molecules vs the test split; with ``test_smiles``, at least 2 valid molecules), ``connected``
        (single-fragment / valid), ``invalid_reasons`` (``{reason: count}``, reasons of
        :data:`molgen.chem.build.INVALID_REASONS` plus ``"unparsable"`` for SMILES), ``test_split``.
        Ratios with an empty denominator are 0.0.
    """
    verdicts = [judge(x) for x in smiles_or_mols]
    n = len(verdicts)
    valid = [v.smiles for v in verdicts if v.smiles is not None]
    distinct = set(valid)

    def ratio(num: float, den: float) -> float:
        return float(num) / den if den else 0.0

    out: dict[str, Any] = {
        "n": n,
        "n_valid": len(valid),
        "validity_wo_correction": ratio(len(valid), n),
        "validity_lenient": ratio(sum(v.valid_lenient for v in verdicts), n),
        "uniqueness": ratio(len(distinct), len(valid)),
        "connected": ratio(sum(v.connected for v in verdicts), len(valid)),
    }
    if train_smiles is not None:
        train = set(train_smiles) if canonical_train else set(_canonical(train_smiles))
        out["novelty"] = ratio(len(distinct - train), len(distinct))
    if test_smiles is not None and len(valid) >= 2:
        from molgen.metrics.fcd import fcd_stats, frechet_distance

        ref = test_smiles if isinstance(test_smiles, FCDStats) else fcd_stats(_canonical(test_smiles))
        gen = fcd_stats(valid)
        out["fcd_test"] = frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)
    out["invalid_reasons"] = dict(Counter(v.reason for v in verdicts if v.smiles is None).most_common())
    out["test_split"] = test_split
    return out


# ----------------------------------------------------------------------------- QM9 reference


@dataclass(frozen=True)
class GDSSReference:
    """QM9 as this protocol's reference (see the module docstring for the split).

    Attributes:
        test_smiles: canonical SMILES of the test split (EDM's, 13,083).
        train_smiles: canonical SMILES of every other molecule (novelty reference).
        train_pool: canonical SMILES of EDM's training split (for the "QM9 train sample" row).
        test_fcd: ChemNet statistics of ``test_smiles`` (cached on disk).
        test_split: a name for the split, for reports.
    """

    test_smiles: list[str] = field(repr=False)
    train_smiles: frozenset[str] = field(repr=False)
    train_pool: list[str] = field(repr=False)
    test_fcd: FCDStats = field(repr=False)
    test_split: str = EDM_TEST_SPLIT


def _fcd_cache_path(cache_dir: str | Path | None, smiles: Sequence[str]) -> Path:
    from molgen.data.qm9 import resolve_cache_dir
    from molgen.metrics import fcd as fcd_module

    try:
        import fcd as fcd_package

        version = getattr(fcd_package, "__version__", "?")
    except ImportError:
        version = "none"
    h = hashlib.sha256(f"{_CACHE_VERSION}:{fcd_module.PAD_LEN}:{''.join(fcd_module.VOCAB)}:{version}\n".encode())
    h.update("\n".join(smiles).encode())
    return resolve_cache_dir(cache_dir) / f"qm9-gdss-test-fcd-{h.hexdigest()[:16]}.npz"


def cached_fcd_stats(smiles: Sequence[str], cache_dir: str | Path | None = None) -> FCDStats:
    """:func:`molgen.metrics.fcd.fcd_stats` of ``smiles``, cached in the molgen cache folder."""
    from molgen.io_utils import atomic_open
    from molgen.metrics.fcd import fcd_stats

    path = _fcd_cache_path(cache_dir, smiles)
    if path.is_file():
        try:
            with np.load(path) as data:
                return FCDStats(mu=data["mu"], sigma=data["sigma"])
        except (OSError, ValueError, KeyError):
            logger.warning("FCD statistics cache %s is unusable; rebuilding it", path)
    stats = fcd_stats(list(smiles))
    with atomic_open(path, "wb") as fh:
        np.savez(fh, mu=stats.mu, sigma=stats.sigma)
    return stats


def qm9_gdss_reference(cache_dir: str | Path | None = None) -> GDSSReference:
    """EDM's QM9 test split (with its ChemNet statistics, computed once and cached) and the rest."""
    from molgen.data.canonical import canonical_qm9_smiles
    from molgen.data.qm9 import edm_splits, load_qm9

    data = load_qm9(cache_dir)
    canonical = canonical_qm9_smiles(data, cache_dir)
    splits = edm_splits(data.num_molecules)
    test_idx = set(splits["test"].tolist())
    test = [canonical[i] for i in splits["test"].tolist() if canonical[i]]
    rest = frozenset(c for i, c in enumerate(canonical) if c and i not in test_idx)
    pool = [canonical[i] for i in splits["train"].tolist() if canonical[i]]
    return GDSSReference(test_smiles=test, train_smiles=rest, train_pool=pool,
                         test_fcd=cached_fcd_stats(test, cache_dir))


def qm9_gdss_metrics(samples: Sequence[Molecule3D | Chem.Mol | str | None], *,
                     cache_dir: str | Path | None = None) -> dict[str, Any]:
    """:func:`gdss_metrics` of ``samples`` against :func:`qm9_gdss_reference` (FCD vs EDM's test
    split, novelty vs every other QM9 molecule): what ``molgen evaluate --protocol gdss`` reports."""
    ref = qm9_gdss_reference(cache_dir)
    return gdss_metrics(samples, test_smiles=ref.test_fcd, train_smiles=ref.train_smiles,
                        test_split=ref.test_split, canonical_train=True)
