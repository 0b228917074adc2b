"""Measuring local 3D geometry: every bond length, bond angle and torsion of a set of molecules,
with its type code and label.

This is the measuring half of the ``geometry`` metric group; :mod:`molgen.metrics.geometry`
compares two measurements and documents what is measured and how the types are labelled (elements
C first, H last, the others alphabetically; bond orders ``-``, ``--``, ``---``, ``:``, ``.``).
All molecules of a set are measured at once, as one concatenated graph (vectorized joins, no
Python loop over bonds or angles).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from rdkit import Chem

#: Torsions with an angle i-j-k or j-k-l above this (degrees) are undefined and not measured.
LINEAR_DEG = 175.0
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


#: Kind -> the type-label function of its codes.
LABELS = {"bond_length": bond_label, "bond_angle": angle_label, "torsion": torsion_label}


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
