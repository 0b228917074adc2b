"""Strict validity for graphs with explicit hydrogens, and stability names that mean one thing.

``validity`` of a molecule with its own bonds (graph families) is strict: RDKit must sanitize it
without adding any implicit hydrogen and every valence must match its formal charge; the lenient
figure is ``validity_lenient``. ``atom_stability`` / ``mol_stability`` are always EDM's distance
rule; the check on a family's own bonds is ``*_stability_graph``.
"""

from __future__ import annotations

import numpy as np
import pytest

from molgen.chem.build import build_mol, sanitize, sanitize_strict
from molgen.chem.elements import ELEMENT_INDEX, Molecule3D
from molgen.chem.molgraph import canonical_graph
from molgen.metrics.basic import assess, basic_metrics, invalid_reasons

_TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3.0)


def _star(symbols: str, n_bonds: int, length: float = 1.09, charges=None, coordinates: bool = True) -> Molecule3D:
    """Atom 0 bonded (single bonds, its own graph) to the next ``n_bonds`` atoms."""
    types = np.array([ELEMENT_INDEX[s] for s in symbols.split()])
    n = len(types)
    bonds = np.zeros((n, n), dtype=np.int64)
    bonds[0, 1:n_bonds + 1] = bonds[1:n_bonds + 1, 0] = 1
    directions = np.vstack([_TETRAHEDRON, [[0.0, 0.0, 1.0]]])[: n - 1]
    pos = np.vstack([[0.0, 0.0, 0.0], length * directions]) if coordinates else np.full((n, 3), np.nan)
    q = None if charges is None else np.asarray(charges, dtype=np.int64)
    return Molecule3D(types, pos, q, bonds=bonds)


def test_ch3_radical_is_invalid_strictly_but_valid_leniently() -> None:
    ch3 = _star("C H H H", 3)
    m = basic_metrics([ch3])
    assert m["validity"] == 0.0 and m["validity_lenient"] == 1.0
    assert sanitize_strict(build_mol(ch3)) == (None, "implicit_h")
    assert invalid_reasons([ch3]) == {"implicit_h": 1}
    # the same atoms as a 3D point cloud keep EDM's lenient definition (RDKit makes it methane)
    cloud = Molecule3D(ch3.atom_types, ch3.positions)
    assert basic_metrics([cloud])["validity"] == 1.0
    assert assess(cloud).smiles == "C"


def test_pentavalent_carbon_is_invalid_both_ways() -> None:
    ch5 = _star("C H H H H H", 5, length=1.0)
    m = basic_metrics([ch5])
    assert m["validity"] == 0.0 and m["validity_lenient"] == 0.0
    assert invalid_reasons([ch5]) == {"valence": 1}


def test_charged_ammonium_and_methane_are_strictly_valid() -> None:
    nh4 = _star("N H H H H", 4, length=1.03, charges=[1, 0, 0, 0, 0])
    methane = _star("C H H H H", 4)
    m = basic_metrics([nh4, methane])
    assert m["validity"] == 1.0 and m["validity_lenient"] == 1.0 and m["uniqueness"] == 1.0
    assert assess(nh4).smiles == "[NH4+]" and assess(methane).smiles == "C"
    # without its charge N with four bonds is over-bonded
    neutral = _star("N H H H H", 4, length=1.03)
    assert basic_metrics([neutral])["validity_lenient"] == 0.0
    # a charged atom that RDKit completes with hydrogens is not strictly valid: NH3+ (-> NH4+) ...
    nh3_plus = basic_metrics([_star("N H H H", 3, length=1.03, charges=[1, 0, 0, 0])])
    assert nh3_plus["validity"] == 0.0 and nh3_plus["validity_lenient"] == 1.0
    # ... while the closed-shell methyl anion has the valence its charge asks for (C- 3)
    assert basic_metrics([_star("C H H H", 3, charges=[-1, 0, 0, 0])])["validity"] == 1.0


def test_strict_validity_needs_no_coordinates() -> None:
    methane = _star("C H H H H", 4, coordinates=False)
    ch3 = _star("C H H H", 3, coordinates=False)
    m = basic_metrics([methane, ch3])
    assert m["validity"] == 0.5 and m["validity_lenient"] == 1.0
    # no coordinates: unstable by the distance rule, stable by its own bonds
    assert m["mol_stability"] == 0.0 and m["atom_stability"] == 0.0
    assert m["mol_stability_graph"] == 0.5 and m["atom_stability_graph"] == pytest.approx(8 / 9)


def test_stability_is_the_distance_rule_and_own_bonds_have_their_own_name() -> None:
    # methane whose own graph is right but whose hydrogens sit 2 Å away: the distance rule finds no
    # C-H bond, its own bonds are a stable molecule
    far = _star("C H H H H", 4, length=2.0)
    # methane with the right geometry but a graph missing one C-H bond: stable by distance only
    wrong_graph = _star("C H H H H", 3)
    m = basic_metrics([far, wrong_graph])
    assert m["mol_stability"] == 0.5 and m["atom_stability"] == pytest.approx(5 / 10)
    assert m["mol_stability_graph"] == 0.5 and m["atom_stability_graph"] == pytest.approx(8 / 10)
    a_far, a_wrong = assess(far), assess(wrong_graph)
    assert not a_far.mol_stable and a_far.mol_stable_graph
    assert a_wrong.mol_stable and not a_wrong.mol_stable_graph
    # validity follows the own graph: `far` is methane; `wrong_graph` has a CH3 radical + an H atom
    assert m["validity"] == 0.5 and m["validity_lenient"] == 1.0
    # 3D point clouds get no *_graph keys
    cloud = Molecule3D(wrong_graph.atom_types, wrong_graph.positions)
    assert "mol_stability_graph" not in basic_metrics([cloud])


def test_qm9_graphs_from_their_own_smiles_are_strictly_valid(qm9) -> None:
    """QM9's own graphs (explicit hydrogens, charges from the SMILES) pass the strict rule."""
    idx = np.random.default_rng(0).choice(qm9.num_molecules, size=500, replace=False)
    mols = []
    for i in idx.tolist():
        g = canonical_graph(qm9.smiles[i])
        assert g is not None, qm9.smiles[i]
        mols.append(Molecule3D(np.asarray(g.atom_types), np.full((g.num_atoms, 3), np.nan),
                               np.asarray(g.charges), bonds=g.bond_matrix()))
    m = basic_metrics(mols)
    assert m["validity"] >= 0.995, (m, invalid_reasons(mols))
    assert m["validity_lenient"] >= m["validity"]
    assert m["mol_stability"] == 0.0  # no coordinates given: the distance rule sees nothing
    # every strictly valid graph also passes RDKit's plain sanitization
    assert all(sanitize(build_mol(x))[0] is not None for x in mols if assess(x).smiles is not None)
