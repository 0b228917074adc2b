"""Basic sample metrics of molecules: stability, validity, uniqueness, connectivity, novelty.

Reference: Hoogeboom et al., "Equivariant Diffusion for Molecule Generation in 3D", ICML 2022 (EDM),
``qm9/analyze.py`` and ``qm9/rdkit_functions.py`` (``BasicMolecularMetrics``):

- ``atom_stability`` / ``mol_stability``: :mod:`molgen.chem.stability` on bonds inferred from the
  positions by EDM's distance rule, charges ignored (published protocol), **for every family**: a
  graph family's bonds are not used, its conformers are judged like any 3D sample. A molecule
  without usable coordinates has every atom unstable.
- ``validity``: for a 3D point cloud (no own ``bonds``), EDM's: the molecule built from the inferred
  bonds passes ``Chem.SanitizeMol``, RDKit free to add implicit hydrogens. For a graph family's
  molecule (own ``bonds``, hydrogens as atoms) the strict rule of
  :func:`molgen.chem.build.sanitize_strict`: sanitization adds no hydrogen and every valence equals
  the charge-adjusted one. A CH3 radical is valid for EDM, not strictly.
- uniqueness: distinct largest-fragment canonical SMILES among the valid / number valid;
- novelty: distinct valid SMILES not in the training set / distinct valid SMILES.

Each molecule is judged by its own validity rule in ``validity``, ``uniqueness``, ``valid_unique``,
``connected`` and ``novelty``. Under their own names, for comparison with older numbers:
``validity_lenient`` (``Chem.SanitizeMol`` on the molecule's own structure, implicit hydrogens
allowed: equal to ``validity`` for 3D point clouds) and, when some molecule carries its own bonds,
``atom_stability_graph`` / ``mol_stability_graph`` (EDM's valence check on those bonds, charges
ignored; molecules without own bonds judged by the distance rule).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rdkit import Chem

from molgen.chem.build import (
    bond_matrix,
    build_mol,
    edm_bond_matrix,
    largest_fragment_smiles,
    num_fragments,
    sanitize,
    sanitize_strict,
)
from molgen.chem.elements import Molecule3D
from molgen.chem.stability import atom_stability_from_bonds


@dataclass(frozen=True)
class Assessment:
    """The verdicts on one molecule (see the module docstring for the rules).

    Attributes:
        n_atoms: number of atoms.
        n_stable_atoms: atoms stable by EDM's rule on bonds inferred from the positions.
        n_stable_atoms_graph: atoms stable by the same check on the molecule's own bonds (the
            distance rule when it has none).
        has_own_bonds: the molecule carries a graph family's bonds.
        smiles: largest-fragment canonical SMILES; ``None`` when invalid by the molecule's rule.
        reason: why invalid (:data:`molgen.chem.build.INVALID_REASONS`); ``None`` when valid.
        valid_lenient: ``Chem.SanitizeMol`` accepts the molecule's structure (implicit H allowed).
        connected: valid and a single fragment.
    """

    n_atoms: int
    n_stable_atoms: int
    n_stable_atoms_graph: int
    has_own_bonds: bool
    smiles: str | None
    reason: str | None
    valid_lenient: bool
    connected: bool

    @property
    def mol_stable(self) -> bool:
        return self.n_atoms > 0 and self.n_stable_atoms == self.n_atoms

    @property
    def mol_stable_graph(self) -> bool:
        return self.n_atoms > 0 and self.n_stable_atoms_graph == self.n_atoms


def _n_stable(mol: Molecule3D, bonds) -> int:
    return 0 if bonds is None else int(atom_stability_from_bonds(mol.atom_types, bonds).sum())


def _validity(mol: Molecule3D, edm_bonds=None) -> tuple[Chem.Mol | None, str | None, bool]:
    """``(sanitized mol or None, reason, valid_lenient)`` by the molecule's own validity rule.

    ``edm_bonds``: :func:`~molgen.chem.build.edm_bond_matrix` of ``mol`` if already computed.
    """
    # own bonds, else EDM's; no structure at all -> rejected as "no_structure"
    m = build_mol(mol, mol.bonds if mol.bonds is not None else edm_bonds)
    if mol.bonds is None:
        out, reason = sanitize(m)
        return out, reason, out is not None
    out, reason = sanitize_strict(m)
    return out, reason, out is not None or sanitize(m)[0] is not None


def assess(mol: Molecule3D, explicit_hydrogens: bool = False) -> Assessment:
    """Stability and validity of one molecule (module docstring).

    Args:
        mol: the molecule; positions in Å, optional own ``bonds`` (graph families).
        explicit_hydrogens: write :attr:`Assessment.smiles` with hydrogen atoms (EDM's strings).
    """
    edm_bonds = edm_bond_matrix(mol)
    n_stable = _n_stable(mol, edm_bonds)
    n_stable_graph = n_stable if mol.bonds is None else _n_stable(mol, bond_matrix(mol))
    m, reason, lenient = _validity(mol, edm_bonds)
    smiles = None if m is None else largest_fragment_smiles(m, explicit_hydrogens=explicit_hydrogens)
    return Assessment(
        n_atoms=mol.num_atoms,
        n_stable_atoms=n_stable,
        n_stable_atoms_graph=n_stable_graph,
        has_own_bonds=mol.bonds is not None,
        smiles=smiles,
        reason=reason,
        valid_lenient=lenient,
        connected=m is not None and num_fragments(m) == 1,
    )


def basic_metrics(
    mols: Sequence[Molecule3D],
    train_smiles: set[str] | None = None,
    *,
    explicit_hydrogens: bool = False,
) -> dict[str, float]:
    """EDM's sample-quality numbers for a set of molecules, with strict validity for graphs.

    Args:
        mols: generated (or reference) molecules, positions in Å; graph families' molecules carry
            their own ``bonds``.
        train_smiles: canonical SMILES of the training set, written the same way as here (use
            :func:`molgen.chem.build.mol_to_smiles` on the training molecules, with the same
            ``explicit_hydrogens``). When given, adds ``novelty``.
        explicit_hydrogens: identify molecules by EDM's all-hydrogen SMILES instead of the default
            implicit-hydrogen ones (affects uniqueness and novelty only; see
            :mod:`molgen.chem.build`).

    Returns:
        ``atom_stability``, ``mol_stability`` (EDM's distance rule), ``validity`` (EDM's for 3D
        point clouds, strict for molecules with own bonds), ``validity_lenient`` (implicit
        hydrogens allowed), ``uniqueness`` (among valid), ``valid_unique`` (validity ×
        uniqueness), ``connected`` (fraction of valid molecules that are a single fragment),
        ``novelty`` (only with ``train_smiles``), ``atom_stability_graph`` /
        ``mol_stability_graph`` (only when some molecule has own bonds) and ``n`` (number of
        molecules). Ratios with an empty denominator are 0.0.
    """
    results = [assess(m, explicit_hydrogens) for m in mols]
    n = len(results)
    n_atoms = sum(r.n_atoms for r in results)
    valid = [r for r in results if r.smiles is not None]
    unique = {r.smiles for r in valid}

    def ratio(num: float, den: float) -> float:
        return float(num) / den if den else 0.0

    out = {
        "atom_stability": ratio(sum(r.n_stable_atoms for r in results), n_atoms),
        "mol_stability": ratio(sum(r.mol_stable for r in results), n),
        "validity": ratio(len(valid), n),
        "validity_lenient": ratio(sum(r.valid_lenient for r in results), n),
        "uniqueness": ratio(len(unique), len(valid)),
        "connected": ratio(sum(r.connected for r in valid), len(valid)),
    }
    out["valid_unique"] = out["validity"] * out["uniqueness"]
    if train_smiles is not None:
        out["novelty"] = ratio(len(unique - set(train_smiles)), len(unique))
    if any(r.has_own_bonds for r in results):
        out["atom_stability_graph"] = ratio(sum(r.n_stable_atoms_graph for r in results), n_atoms)
        out["mol_stability_graph"] = ratio(sum(r.mol_stable_graph for r in results), n)
    out["n"] = n
    return out


def invalid_reasons(mols: Sequence[Molecule3D]) -> dict[str, int]:
    """Histogram of why molecules fail RDKit sanitization.

    Args:
        mols: molecules, positions in Å.

    Returns:
        ``{reason: count}`` over the molecules invalid by their own rule (as in ``validity`` of
        :func:`basic_metrics`), reasons from :data:`molgen.chem.build.INVALID_REASONS`, most
        frequent first.
    """
    counts = Counter(_validity(m)[1] for m in mols)
    counts.pop(None, None)
    return dict(counts.most_common())
