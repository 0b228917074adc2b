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
keyed by this module's and the bond code's source, the RDKit version and the QM9 rows / ids.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from rdkit import Chem

from molgen.metrics.embedding import wasserstein1

logger = logging.getLogger(__name__)

#: Items a type needs in both sets for its W1 to be reported (and enter the mean).
MIN_COUNT = 20
#: Torsions with an angle i-j-k or j-k-l above this (degrees) are undefined and not measured.
LINEAR_DEG = 175.0
#: Bump when the cached reference measurements change meaning.
CACHE_VERSION = "1"
KINDS: tuple[str, ...] = ("bond_length", "bond_angle", "torsion")

#: Bond-order code (4 = aromatic, 0 = other) -> symbol in type labels (see the module doc).
ORDER_SYMBOLS: dict[int, str] = {0: ".", 1: "-", 2: "--", 3: "---", 4: ":"}
_PT = Chem.GetPeriodicTable()
_SYMBOLS = [""] + [_PT.GetElementSymbol(z) for z in range(1, 119)]
#: Element ranks for labels: C first, H last, others alphabetical. ``_RANK[z]``, ``_Z_OF_RANK[r]``.
_Z_OF_RANK = np.array([6] + sorted((z for z in range(2, 119) if z != 6), key=lambda z: _SYMBOLS[z]) + [1, 0])
_RANK = np.zeros(len(_Z_OF_RANK), dtype=np.int64)
_RANK[_Z_OF_RANK] = np.arange(len(_Z_OF_RANK))
_B = 128  # radix of the type codes (ranks < 128)


@dataclass
class GeometryFeatures:
    """Measurements of one set of molecules, as flat arrays over all its molecules.

    Attributes:
        atom_z: ``[A]`` atomic numbers of every atom.
        bond_code, bond_length: ``[B]`` type code and length (Å) of every bond.
        angle_code, angle_deg: ``[G]`` type code and value (degrees) of every bond angle.
        torsion_code, torsion_deg: ``[T]`` type code and ``|dihedral|`` (degrees) of every torsion.
        n_molecules: molecules measured; n_undefined: angles / torsions that were not finite.
    """

    atom_z: np.ndarray
    bond_code: np.ndarray
    bond_length: np.ndarray
    angle_code: np.ndarray
    angle_deg: np.ndarray
    torsion_code: np.ndarray
    torsion_deg: np.ndarray
    n_molecules: int
    n_undefined: int = 0

    def values(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, values)`` of ``kind`` (one of :data:`KINDS`)."""
        return {"bond_length": (self.bond_code, self.bond_length), "bond_angle": (self.angle_code, self.angle_deg),
                "torsion": (self.torsion_code, self.torsion_deg)}[kind]

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})
        return buf.getvalue()

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> GeometryFeatures:
        with np.load(path, allow_pickle=False) as z:
            kw = {f.name: z[f.name] for f in fields(cls)}
        kw["n_molecules"], kw["n_undefined"] = int(kw["n_molecules"]), int(kw["n_undefined"])
        return cls(**kw)


# ----------------------------------------------------------------------------- type labels


def bond_label(code: int) -> str:
    """``"C-H"``, ``"C--O"``, ``"C:C"``, ... for a bond type code."""
    lo, hi, order = code >> 10, (code >> 3) & 127, code & 7
    return f"{_SYMBOLS[_Z_OF_RANK[lo]]}{ORDER_SYMBOLS[int(order)]}{_SYMBOLS[_Z_OF_RANK[hi]]}"


def _path_label(code: int, n: int) -> str:
    ranks = [(code // _B ** (n - 1 - i)) % _B for i in range(n)]
    return "-".join(_SYMBOLS[_Z_OF_RANK[r]] for r in ranks)


def angle_label(code: int) -> str:
    """``"C-C-H"`` (centre in the middle) for an angle type code."""
    return _path_label(int(code), 3)


def torsion_label(code: int) -> str:
    """``"H-C-C-H"`` for a torsion type code."""
    return _path_label(int(code), 4)


_LABELS = {"bond_length": bond_label, "bond_angle": angle_label, "torsion": torsion_label}


# ----------------------------------------------------------------------------- measuring


def _order_codes(orders: np.ndarray) -> np.ndarray:
    """RDKit bond orders as doubles (1, 1.5, 2, 3) -> codes 1, 4, 2, 3 (0: anything else)."""
    code = np.zeros(len(orders), dtype=np.int64)
    for value, c in ((1.0, 1), (2.0, 2), (3.0, 3), (1.5, 4)):
        code[orders == value] = c
    return code


def _concat(mols: Sequence[Chem.Mol], atom_z: Sequence[np.ndarray] | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All molecules as one graph: ``z [A]``, ``pos [A, 3]``, bonds ``bi, bj [B]`` (global atom
    indices, ``bi < bj``) and RDKit orders ``[B]``. RDKit per molecule (C++ calls only when
    ``atom_z`` is given)."""
    zs, poss, bis, bjs, orders = [], [], [], [], []
    offset = 0
    for t, m in enumerate(mols):
        n = m.GetNumAtoms()
        if atom_z is not None:
            zs.append(np.asarray(atom_z[t], np.int64).reshape(n))
        else:
            zs.append(np.fromiter((a.GetAtomicNum() for a in m.GetAtoms()), np.int64, n))
        poss.append(np.asarray(m.GetConformer().GetPositions(), np.float64).reshape(n, 3))
        adj = Chem.GetAdjacencyMatrix(m, useBO=True)
        i, j = np.nonzero(np.triu(adj, 1))
        bis.append(i + offset)
        bjs.append(j + offset)
        orders.append(adj[i, j])
        offset += n
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    pos = np.concatenate(poss) if poss else np.zeros((0, 3))
    return cat(zs, np.int64), pos, cat(bis, np.int64), cat(bjs, np.int64), cat(orders, np.float64)


def _join(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs ``(p, q)`` with ``left[p] == right[q]`` (a vectorized equi-join)."""
    order = np.argsort(right, kind="stable")
    sr = right[order]
    lo, hi = np.searchsorted(sr, left, "left"), np.searchsorted(sr, left, "right")
    cnt = hi - lo
    p = np.repeat(np.arange(len(left)), cnt)
    within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return p, order[np.repeat(lo, cnt) + within]


def _angle_deg(pos: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    u, v = pos[a] - pos[b], pos[c] - pos[b]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", u, v) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def dihedral_deg(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray) -> np.ndarray:
    """Signed dihedral angles (degrees, ``(-180, 180]``) of ``[T, 3]`` point rows (IUPAC sign)."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    with np.errstate(invalid="ignore", divide="ignore"):
        b1 = b1 / np.linalg.norm(b1, axis=1, keepdims=True)
    v = b0 - np.einsum("ij,ij->i", b0, b1)[:, None] * b1
    w = b2 - np.einsum("ij,ij->i", b2, b1)[:, None] * b1
    x = np.einsum("ij,ij->i", v, w)
    y = np.einsum("ij,ij->i", np.cross(b1, v), w)
    return np.degrees(np.arctan2(y, x))


def _path_code(ranks: list[np.ndarray]) -> np.ndarray:
    code = np.zeros_like(ranks[0])
    for r in ranks:
        code = code * _B + r
    return code


def geometry_features(mols: Sequence[Chem.Mol], atom_z: Sequence[np.ndarray] | None = None) -> GeometryFeatures:
    """Measure ``mols`` (RDKit molecules with a 3D conformer and their bonds; hydrogens as atoms).

    Bonds are ``mol``'s bonds; angles are all pairs of bonds sharing an atom; torsions are all
    paths i-j-k-l (see the module doc). Computed on the concatenation of all molecules at once.
    ``atom_z``: the atomic numbers of each molecule's atoms in RDKit's order, when the caller
    has them (saves a Python loop over the atoms); default: read from RDKit.
    """
    z, pos, bi, bj, orders = _concat(mols, atom_z)
    rank = _RANK[np.clip(z, 0, 118)]
    n_atoms = len(z)
    lo, hi = np.minimum(rank[bi], rank[bj]), np.maximum(rank[bi], rank[bj])
    bond_code = (lo << 10) | (hi << 3) | _order_codes(orders)
    bond_length = np.linalg.norm(pos[bi] - pos[bj], axis=1)

    # angles a-b-c: pairs of directed edges b->a, b->c with the same centre b and a < c
    src, dst = np.concatenate([bi, bj]), np.concatenate([bj, bi])
    p, q = _join(src, src)
    keep = dst[p] < dst[q]
    a, b, c = dst[p[keep]], src[p[keep]], dst[q[keep]]
    angle_deg = _angle_deg(pos, a, b, c)
    ra, rc = rank[a], rank[c]
    angle_code = _path_code([np.minimum(ra, rc), rank[b], np.maximum(ra, rc)])

    # torsions i-j-k-l: ordered paths (i, j, k) joined with (j, k, l) on the bond (j, k), j < k
    pa = np.concatenate([a, c]), np.concatenate([b, b]), np.concatenate([c, a])
    ang2 = np.concatenate([angle_deg, angle_deg])
    p, q = _join(pa[1] * n_atoms + pa[2], pa[0] * n_atoms + pa[1])
    i, j, k, l = pa[0][p], pa[1][p], pa[2][p], pa[2][q]
    keep = (j < k) & (i != l) & ~(ang2[p] > LINEAR_DEG) & ~(ang2[q] > LINEAR_DEG)
    i, j, k, l = i[keep], j[keep], k[keep], l[keep]
    torsion_deg = np.abs(dihedral_deg(pos[i], pos[j], pos[k], pos[l]))
    fwd = _path_code([rank[i], rank[j], rank[k], rank[l]])
    rev = _path_code([rank[l], rank[k], rank[j], rank[i]])
    torsion_code = np.minimum(fwd, rev)

    ok_a, ok_t = np.isfinite(angle_deg), np.isfinite(torsion_deg)
    return GeometryFeatures(
        atom_z=z, bond_code=bond_code, bond_length=bond_length,
        angle_code=angle_code[ok_a], angle_deg=angle_deg[ok_a],
        torsion_code=torsion_code[ok_t], torsion_deg=torsion_deg[ok_t],
        n_molecules=len(mols), n_undefined=int((~ok_a).sum() + (~ok_t).sum()),
    )


def measurable(mols: Sequence[Chem.Mol | None]) -> list[int]:
    """Indices of the molecules :func:`geometry_features` can measure: not ``None``, with a 3D
    conformer of finite coordinates."""
    out = []
    for t, m in enumerate(mols):
        if m is None or m.GetNumAtoms() == 0 or m.GetNumConformers() == 0:
            continue
        conf = m.GetConformer()
        if conf.Is3D() and np.isfinite(conf.GetPositions()).all():
            out.append(t)
    return out


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
    label = _LABELS[kind]
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
