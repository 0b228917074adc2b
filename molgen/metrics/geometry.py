"""The ``geometry`` metric group of ``molgen benchmark``: local 3D geometry against a reference.

For the valid 3D sample molecules and a 3D reference (QM9's test split: the ``embedding`` group's
subset of at most 10,000 molecules; or a 3D file) this module measures, all molecules at once,

- bond lengths (Å) per bond type: the two elements plus the bond order, e.g. ``C-H``;
- bond angles (degrees) per angle type: three elements, centre in the middle, orders ignored
  (``C-C-H``; ends ordered as below);
- torsion angles per torsion type (``H-C-C-H``): the absolute dihedral ``|φ|`` in ``[0, 180]``
  degrees, compared with the ordinary W1 on that interval (``|φ|`` folds mirror images together:
  no circular distance needed). Every path i-j-k-l of bonds counts, except through a 3-membered
  ring (``i == l``) or with a near-linear angle (> 175°: the dihedral is undefined), in both sets;

and compares the two sets with Wasserstein-1 distances (``scipy.stats.wasserstein_distance``).

Bonds are the molecule's own: an SDF file's, else EDM's distance rule (:func:`molgen.chem.bonds.bond_order_matrix`
via the reader / :func:`molgen.chem.build.build_mol`), aromaticity perceived by RDKit's sanitization.
Only valid molecules are measured; the others are counted in ``geometry/unmeasured``.

Type labels: elements ordered C first, H last, the others alphabetically (``C-O``, ``N-H``,
``C-N-H``, ``O-C-C-H``). Bond orders are written so that MLflow keeps them apart (it maps ``=``
and ``#`` to ``_``): single ``-``, double ``--``, triple ``---``, aromatic ``:`` (``C--O`` is a
carbonyl, ``C---N`` a nitrile, ``C:C`` aromatic); ``.`` is any other RDKit bond type.

Keys (``<kind>`` is ``bond_length`` (Å), ``bond_angle`` (deg) or ``torsion`` (deg)):

- ``geometry/<kind>_w1``: the mean of the per-type W1 over the compared types, weighted by each
  type's count in the reference (so a generator cannot move the weights);
- ``geometry/<kind>_w1_by_type/<type>``: W1 of every type with at least :data:`MIN_COUNT` items
  in both sets; ``geometry/<kind>_types_compared``: how many;
- ``geometry/<kind>_uncompared_samples`` / ``_uncompared_reference``: items of the types that were
  not compared (missing or rarer than :data:`MIN_COUNT` on one side), and per such type that is
  missing on one side or common on the other (not merely rare on both)
  ``geometry/<kind>_uncompared_by_type/<type>/samples`` and ``/reference`` (counts; 0 = absent);
- ``geometry/atom_type_tv`` and ``geometry/bond_type_tv``: total variation ``½ Σ |p - q|`` of
  the normalized histograms of elements (all atoms) and of bond types (all bonds);
- ``geometry/molecules``, ``geometry/reference_molecules``: molecules measured;
  ``geometry/unmeasured``: sample records not measured (invalid, or no 3D coordinates); and
  ``geometry/undefined_samples``: sample angles / torsions with coincident atoms (not finite).

The QM9 reference's measurements are cached in ``<cache>/geometry_reference/qm9_test-<hash>.npz``,
keyed by the source of this module, of :mod:`molgen.metrics.geometry_features` and of the bond
code, the RDKit version and the QM9 rows / ids. The measuring itself is in
:mod:`molgen.metrics.geometry_features`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from molgen.metrics import geometry_features as _features
from molgen.metrics.embedding import wasserstein1
from molgen.metrics.geometry_features import KINDS, LABELS, GeometryFeatures, geometry_features, measurable

logger = logging.getLogger(__name__)

#: Items a type needs in both sets for its W1 to be reported (and enter the mean).
MIN_COUNT = 20
#: Bump when the cached reference measurements change meaning.
CACHE_VERSION = "1"



# ----------------------------------------------------------------------------- comparing


def _groups(codes: np.ndarray, values: np.ndarray) -> dict[int, np.ndarray]:
    """``{code: values of that code}``."""
    order = np.argsort(codes, kind="stable")
    sc, sv = codes[order], values[order]
    uniq, starts = np.unique(sc, return_index=True)
    return {int(u): part for u, part in zip(uniq, np.split(sv, starts[1:]))}


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """``½ Σ_t |p_t - q_t|`` of the normalized histograms of two integer label arrays (0 if both
    are empty, 1 if exactly one is)."""
    if not len(a) or not len(b):
        return 0.0 if len(a) == len(b) else 1.0
    labels = np.union1d(a, b)
    p = np.bincount(np.searchsorted(labels, a), minlength=len(labels)) / len(a)
    q = np.bincount(np.searchsorted(labels, b), minlength=len(labels)) / len(b)
    return float(0.5 * np.abs(p - q).sum())


def compare_kind(kind: str, samples: GeometryFeatures, reference: GeometryFeatures,
                 min_count: int = MIN_COUNT) -> dict[str, float]:
    """The ``geometry/<kind>_*`` keys (see the module doc) for one of :data:`KINDS`."""
    gs, gr = _groups(*samples.values(kind)), _groups(*reference.values(kind))
    label = LABELS[kind]
    out: dict[str, float] = {}
    w1, weights = [], []
    unc_s = unc_r = 0
    for code in sorted(set(gs) | set(gr), key=label):
        s, r = gs.get(code, np.zeros(0)), gr.get(code, np.zeros(0))
        name = label(code)
        if len(s) >= min_count and len(r) >= min_count:
            d = wasserstein1(s, r)
            out[f"geometry/{kind}_w1_by_type/{name}"] = d
            w1.append(d)
            weights.append(len(r))
        else:
            unc_s, unc_r = unc_s + len(s), unc_r + len(r)
            if min(len(s), len(r)) == 0 or max(len(s), len(r)) >= min_count:  # not just rare on both sides
                out[f"geometry/{kind}_uncompared_by_type/{name}/samples"] = float(len(s))
                out[f"geometry/{kind}_uncompared_by_type/{name}/reference"] = float(len(r))
    if w1:
        out[f"geometry/{kind}_w1"] = float(np.average(w1, weights=weights))
    out[f"geometry/{kind}_types_compared"] = float(len(w1))
    out[f"geometry/{kind}_uncompared_samples"] = float(unc_s)
    out[f"geometry/{kind}_uncompared_reference"] = float(unc_r)
    return out


def compare_geometry(samples: GeometryFeatures, reference: GeometryFeatures,
                     min_count: int = MIN_COUNT) -> dict[str, float]:
    """Every key of the ``geometry`` group but ``geometry/unmeasured`` (the caller's count)."""
    out = {"geometry/molecules": float(samples.n_molecules),
           "geometry/reference_molecules": float(reference.n_molecules),
           "geometry/undefined_samples": float(samples.n_undefined),
           "geometry/atom_type_tv": total_variation(samples.atom_z, reference.atom_z),
           "geometry/bond_type_tv": total_variation(samples.bond_code, reference.bond_code)}
    for kind in KINDS:
        out.update(compare_kind(kind, samples, reference, min_count))
    return out


# ----------------------------------------------------------------------------- QM9 reference


def _qm9_mols(data, rows: np.ndarray) -> tuple[list[Chem.Mol | None], list[np.ndarray]]:
    """QM9 rows as sanitized RDKit molecules with EDM's bonds (``None`` where invalid) and their
    atomic numbers."""
    from molgen.chem.build import build_mol, sanitize
    from molgen.chem.elements import ATOMIC_NUMBERS

    z_of_type = np.asarray(ATOMIC_NUMBERS, np.int64)
    mols = [data.molecule(int(i)) for i in rows]
    return [sanitize(build_mol(m))[0] for m in mols], [z_of_type[m.atom_types] for m in mols]


def reference_cache_path(data, rows: np.ndarray, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`qm9_reference_geometry` caches the measurements of ``rows`` of ``data``."""
    import rdkit

    from molgen.chem import bonds, build
    from molgen.data.qm9 import resolve_cache_dir

    h = hashlib.sha256(f"molgen-geometry-reference:{CACHE_VERSION}:{rdkit.__version__}\n".encode())
    for module in (bonds, build):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(Path(_features.__file__).read_bytes())
    h.update(np.asarray(rows, np.int64).tobytes())
    h.update(data.index.numpy()[rows].astype(np.int64).tobytes())
    return resolve_cache_dir(cache_dir) / "geometry_reference" / f"qm9_test-{h.hexdigest()[:16]}.npz"


def qm9_reference_geometry(data, cache_dir: str | os.PathLike | None = None,
                           rows: np.ndarray | None = None) -> GeometryFeatures:
    """Measurements of QM9 ``rows`` (default: the ``embedding`` group's test-split subset,
    :func:`molgen.metrics.oracle_metrics.qm9_reference_rows`), cached on disk (see the module doc).
    The reference's own invalid molecules (EDM's bonds) are left out of it."""
    from molgen.errors import MolgenError
    from molgen.io_utils import atomic_open

    if rows is None:
        from molgen.metrics.oracle_metrics import qm9_reference_rows

        rows = qm9_reference_rows(data)
    path = reference_cache_path(data, rows, cache_dir)
    if path.is_file():
        try:
            return GeometryFeatures.from_npz(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("ignoring unreadable geometry reference cache %s (%s)", path, exc)
    feats = _measure(*_qm9_mols(data, rows))
    try:
        with atomic_open(path, "wb") as fh:
            fh.write(feats.to_npz())
    except MolgenError as exc:  # an unwritable cache must not fail the metrics
        logger.warning("%s", exc)
    return feats


def _measure(mols: Sequence[Chem.Mol | None], atom_z: Sequence[np.ndarray | None] | None = None) -> GeometryFeatures:
    """:func:`geometry_features` of the :func:`measurable` entries of ``mols``."""
    keep = measurable(mols)
    zs = [atom_z[t] for t in keep] if atom_z is not None else None
    return geometry_features([mols[t] for t in keep], None if zs is None or any(z is None for z in zs) else zs)


def measure_geometry(samples: Sequence[Chem.Mol | None], *, sample_z: Sequence[np.ndarray | None] | None = None,
                     qm9_data=None, reference_mols: Sequence[Chem.Mol | None] | None = None,
                     reference_z: Sequence[np.ndarray | None] | None = None,
                     cache_dir: str | os.PathLike | None = None) -> tuple[GeometryFeatures, GeometryFeatures]:
    """``(samples, reference)`` measurements: ``samples`` (one entry per input record: the sanitized
    RDKit molecule with its 3D conformer, ``None`` when invalid) and QM9 (``qm9_data``) or
    ``reference_mols`` (same convention). ``sample_z`` / ``reference_z``: optional atomic numbers
    per molecule (see :func:`geometry_features`)."""
    if qm9_data is not None:
        reference = qm9_reference_geometry(qm9_data, cache_dir)
    elif reference_mols is not None:
        reference = _measure(reference_mols, reference_z)
    else:
        raise ValueError("measure_geometry needs qm9_data or reference_mols")
    return _measure(samples, sample_z), reference


def score_geometry(samples: GeometryFeatures, reference: GeometryFeatures, n_records: int,
                   min_count: int = MIN_COUNT) -> dict[str, float]:
    """The ``geometry`` keys of two measurements; ``n_records`` sample records were offered (those
    not measured are counted in ``geometry/unmeasured``)."""
    out = compare_geometry(samples, reference, min_count)
    out["geometry/unmeasured"] = float(n_records - samples.n_molecules)
    return out


def geometry_metrics(samples: Sequence[Chem.Mol | None], *, sample_z: Sequence[np.ndarray | None] | None = None,
                     qm9_data=None, reference_mols: Sequence[Chem.Mol | None] | None = None,
                     reference_z: Sequence[np.ndarray | None] | None = None,
                     cache_dir: str | os.PathLike | None = None, min_count: int = MIN_COUNT) -> dict[str, float]:
    """The ``geometry`` group (:func:`measure_geometry` then :func:`score_geometry`)."""
    feats, reference = measure_geometry(samples, sample_z=sample_z, qm9_data=qm9_data, reference_mols=reference_mols,
                                        reference_z=reference_z, cache_dir=cache_dir)
    return score_geometry(feats, reference, len(samples), min_count)
