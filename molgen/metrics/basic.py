"""Basic sample metrics of 3D molecules: stability, validity, uniqueness, connectivity, novelty.

Reference: Hoogeboom et al., "Equivariant Diffusion for Molecule Generation in 3D", ICML 2022 (EDM),
``qm9/analyze.py`` and ``qm9/rdkit_functions.py`` (``BasicMolecularMetrics``):

- atom / molecule stability: :mod:`molgen.chem.stability`, charges ignored (published protocol);
- validity: the molecule built from the inferred bonds passes ``Chem.SanitizeMol``;
- uniqueness: distinct largest-fragment canonical SMILES among the valid / number valid;
- novelty: distinct valid SMILES not in the training set / distinct valid SMILES.

Each molecule's bonds are inferred once and shared by the stability and validity checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from molgen.chem.build import bond_matrix, build_mol, largest_fragment_smiles, num_fragments, sanitize
from molgen.chem.elements import Molecule3D
from molgen.chem.stability import atom_stability_from_bonds


@dataclass(frozen=True)
class _Assessment:
    n_atoms: int
    n_stable_atoms: int
    smiles: str | None  # largest-fragment canonical SMILES; None when invalid
    reason: str | None  # why invalid; None when valid
    connected: bool

    @property
    def mol_stable(self) -> bool:
        return self.n_atoms > 0 and self.n_stable_atoms == self.n_atoms


def _assess(mol: Molecule3D, explicit_hydrogens: bool) -> _Assessment:
    bonds = bond_matrix(mol)
    if bonds is None:  # no structure (see Molecule3D): invalid, every atom unstable
        return _Assessment(mol.num_atoms, 0, None, "no_structure", False)
    stable = atom_stability_from_bonds(mol.atom_types, bonds)
    m, reason = sanitize(build_mol(mol, bonds))
    if m is None:
        return _Assessment(len(stable), int(stable.sum()), None, reason, False)
    return _Assessment(
        len(stable),
        int(stable.sum()),
        largest_fragment_smiles(m, explicit_hydrogens=explicit_hydrogens),
        None,
        num_fragments(m) == 1,
    )


def basic_metrics(
    mols: Sequence[Molecule3D],
    train_smiles: set[str] | None = None,
    *,
    explicit_hydrogens: bool = False,
) -> dict[str, float]:
    """EDM's sample-quality numbers for a set of 3D molecules.

    Args:
        mols: generated (or reference) molecules, positions in Å.
        train_smiles: canonical SMILES of the training set, written the same way as here (use
            :func:`molgen.chem.build.mol_to_smiles` on the training molecules, with the same
            ``explicit_hydrogens``). When given, adds ``novelty``.
        explicit_hydrogens: identify molecules by EDM's all-hydrogen SMILES instead of the default
            implicit-hydrogen ones (affects uniqueness and novelty only; see
            :mod:`molgen.chem.build`).

    Returns:
        ``atom_stability``, ``mol_stability``, ``validity``, ``uniqueness`` (among valid),
        ``valid_unique`` (validity × uniqueness), ``connected`` (fraction of valid molecules that
        are a single fragment), ``novelty`` (only with ``train_smiles``) and ``n`` (number of
        molecules). Ratios with an empty denominator are 0.0.
    """
    results = [_assess(m, explicit_hydrogens) for m in mols]
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
        "uniqueness": ratio(len(unique), len(valid)),
        "connected": ratio(sum(r.connected for r in valid), len(valid)),
    }
    out["valid_unique"] = out["validity"] * out["uniqueness"]
    if train_smiles is not None:
        out["novelty"] = ratio(len(unique - set(train_smiles)), len(unique))
    out["n"] = n
    return out


def invalid_reasons(mols: Sequence[Molecule3D]) -> dict[str, int]:
    """Histogram of why molecules fail RDKit sanitization.

    Args:
        mols: molecules, positions in Å.

    Returns:
        ``{reason: count}`` over the invalid molecules only, reasons from
        :data:`molgen.chem.build.INVALID_REASONS`, most frequent first.
    """
    counts = Counter(sanitize(build_mol(m))[1] for m in mols)
    counts.pop(None, None)
    return dict(counts.most_common())
