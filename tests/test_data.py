"""QM9 data layer: loading, units, formal charges, caching, EDM splits, property specs."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from molgen.chem.elements import ELEMENTS
from molgen.data.properties import DEFAULT_PROPERTIES, HARTREE_TO_EV, PROPERTIES, get_property
from molgen.data.qm9 import (
    QM9_NUM_MOLECULES,
    edm_splits,
    format_qm9_summary,
    load_qm9,
    resolve_cache_dir,
)
from molgen.errors import MolgenError


def _cache_file(cache_dir: Path) -> Path:
    (path,) = cache_dir.glob("qm9-*.pt")
    return path


# --------------------------------------------------------------------------- full dataset


def test_full_dataset_counts(qm9):
    assert qm9.num_molecules == QM9_NUM_MOLECULES == 130_831
    qm9.validate()
    n = qm9.n_atoms
    assert int(n.sum()) == qm9.atom_types.numel() == qm9.positions.shape[0] == qm9.charges.numel()
    assert int(n.min()) == 3 and int(n.max()) == 29
    assert qm9.properties.shape == (130_831, len(qm9.property_names))
    assert len(qm9.smiles) == 130_831
    assert set(DEFAULT_PROPERTIES) <= set(qm9.property_names)
    assert int(qm9.index[0]) == 1 and int(qm9.index[-1]) == 133_885
    assert bool((qm9.index[1:] > qm9.index[:-1]).all())
    assert int(qm9.atom_types.max()) == len(ELEMENTS) - 1


def test_first_molecule_is_methane(qm9):
    mol = qm9.molecule(0)
    assert qm9.smiles[0] == "C"
    assert mol.symbols == ["C", "H", "H", "H", "H"]
    ch = np.linalg.norm(mol.positions[1:] - mol.positions[0], axis=1)
    np.testing.assert_allclose(ch, 1.0919, atol=2e-3)  # B3LYP C-H bond length
    assert mol.charges.tolist() == [0] * 5
    assert mol.properties["gap"] == pytest.approx(0.5048 * HARTREE_TO_EV, rel=1e-6)


def test_units_are_user_units(qm9):
    assert float(qm9.property("gap")[0]) == pytest.approx(0.5048 * 27.211386, rel=1e-6)
    assert float(qm9.property("homo")[0]) == pytest.approx(-0.3877 * 27.211386, rel=1e-6)
    assert float(qm9.property("alpha")[0]) == pytest.approx(13.21, rel=1e-6)
    assert float(qm9.property("Cv")[0]) == pytest.approx(6.469, rel=1e-6)
    gap = qm9.property("gap")
    assert 5.0 < float(gap.mean()) < 9.0  # ~6.86 eV; Hartree would be ~0.25


def test_data_lies_within_physical_ranges(qm9):
    for j, name in enumerate(qm9.property_names):
        spec = PROPERTIES[name]
        col = qm9.properties[:, j]
        assert float(col.min()) >= spec.low and float(col.max()) <= spec.high, name


def test_zwitterion_formal_charges(qm9):
    i = qm9.smiles.index("[NH3+]CCC([O-])=O")
    mol = qm9.molecule(i)
    heavy = [(s, int(c)) for s, c in zip(mol.symbols, mol.charges) if s != "H"]
    assert heavy == [("N", 1), ("C", 0), ("C", 0), ("C", 0), ("O", -1), ("O", 0)]
    assert int(mol.charges.sum()) == 0

    mol_of_atom = torch.repeat_interleave(torch.arange(qm9.num_molecules), qm9.n_atoms)
    total = torch.zeros(qm9.num_molecules, dtype=torch.long).index_add_(0, mol_of_atom, qm9.charges)
    assert bool((total == 0).all())  # QM9 molecules are neutral overall
    charged = torch.zeros(qm9.num_molecules, dtype=torch.long).index_add_(
        0, mol_of_atom, qm9.charges.abs())
    n_charged = int((charged > 0).sum())
    n_charged_smiles = sum(("+" in s or "-" in s) for s in qm9.smiles)
    assert n_charged == n_charged_smiles > 400
    assert qm9.charge_mismatches == 0
    assert bool((qm9.charges[qm9.atom_types == ELEMENTS.index("H")] == 0).all())


def test_summary(qm9):
    text = format_qm9_summary(qm9)
    assert "130,831 molecules" in text
    assert "train 100,000" in text and "test 13,083" in text
    for name in DEFAULT_PROPERTIES:
        assert f"  {name} " in text
    assert "eV" in text and "charged molecules" in text


# --------------------------------------------------------------------------- splits


def test_edm_split_sizes_disjoint_covering():
    s = edm_splits()
    assert [s[k].numel() for k in ("train", "valid", "test")] == [100_000, 17_748, 13_083]
    allidx = torch.cat([s["train"], s["valid"], s["test"]])
    assert torch.equal(allidx.sort().values, torch.arange(130_831))
    assert s["da"].numel() == s["db"].numel() == 50_000
    halves = torch.cat([s["da"], s["db"]])
    assert torch.equal(halves.sort().values, s["train"].sort().values)
    perm = np.random.RandomState(0).permutation(130_831)
    assert s["train"].tolist() == perm[:100_000].tolist()
    assert s["test"].tolist() == perm[117_748:].tolist()


def test_edm_splits_deterministic_and_seeded():
    a, b = edm_splits(), edm_splits()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["train"], edm_splits(seed=1)["train"])


def test_edm_splits_subset_proportions():
    s = edm_splits(200)
    assert (s["train"].numel(), s["valid"].numel(), s["test"].numel()) == (153, 27, 20)
    assert torch.equal(torch.cat([s["train"], s["valid"], s["test"]]).sort().values,
                       torch.arange(200))
    assert s["da"].numel() + s["db"].numel() == 153


# --------------------------------------------------------------------------- cache behaviour


def test_small_source_loads_in_index_order(qm9_small_source, tmp_path):
    data = load_qm9(tmp_path, source_dir=qm9_small_source)
    assert data.num_molecules == 200  # no 130,831 check for a custom source
    assert data.index.tolist()[:5] == [1, 2, 3, 4, 5]
    # acetylene's coordinates are written "0." and "1." in the CSV
    acetylene = data.molecule(3)
    assert acetylene.symbols == ["C", "C", "H", "H"]
    np.testing.assert_allclose(acetylene.positions[0], [0.5995394918, 0.0, 1.0], atol=1e-6)


def test_unsorted_source_is_reordered(qm9_small_source, tmp_path):
    csv.field_size_limit(sys.maxsize)
    with open(qm9_small_source / "qm9_part1.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    src = tmp_path / "src"
    src.mkdir()
    # two files, each reversed, in the "wrong" file order
    for name, chunk in (("qm9_part1.csv", rows[101:]), ("qm9_part2.csv", rows[1:101])):
        with open(src / name, "w", newline="") as fh:
            csv.writer(fh).writerows([rows[0]] + chunk[::-1])
    shuffled = load_qm9(tmp_path / "c1", source_dir=src)
    ordered = load_qm9(tmp_path / "c2", source_dir=qm9_small_source)
    assert shuffled.smiles == ordered.smiles
    for field in ("atom_types", "positions", "charges", "ptr", "properties", "index"):
        assert torch.equal(getattr(shuffled, field), getattr(ordered, field)), field


def test_warm_load_uses_cache(qm9_small_source, tmp_path, monkeypatch):
    first = load_qm9(tmp_path, source_dir=qm9_small_source)
    import molgen.data.qm9 as qm9_module

    def fail(*args, **kwargs):
        raise AssertionError("should not reparse")

    monkeypatch.setattr(qm9_module, "parse_qm9_csv", fail)
    second = load_qm9(tmp_path, source_dir=qm9_small_source)
    assert torch.equal(first.positions, second.positions) and first.smiles == second.smiles


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_is_rebuilt(qm9_small_source, tmp_path, caplog, damage):
    good = load_qm9(tmp_path, source_dir=qm9_small_source)
    path = _cache_file(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"\x00not a torch file\xff" * 100)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="molgen.data.qm9"):
        again = load_qm9(tmp_path, source_dir=qm9_small_source)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert torch.equal(good.positions, again.positions)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="molgen.data.qm9"):
        load_qm9(tmp_path, source_dir=qm9_small_source)  # the rebuilt file is good
    assert not caplog.records


def test_stale_cache_key_is_rebuilt(qm9_small_source, tmp_path, caplog):
    load_qm9(tmp_path, source_dir=qm9_small_source)
    path = _cache_file(tmp_path)
    payload = torch.load(path, weights_only=True)
    key = payload["key"]
    payload["key"] = "0" * 16
    payload["properties"] = payload["properties"] * 0  # what an old processing would have left
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="molgen.data.qm9"):
        data = load_qm9(tmp_path, source_dir=qm9_small_source)
    assert any("stale" in r.getMessage() for r in caplog.records)
    assert float(data.property("gap")[0]) == pytest.approx(0.5048 * HARTREE_TO_EV, rel=1e-6)
    assert torch.load(path, weights_only=True)["key"] == key


def test_inconsistent_cache_is_rebuilt(qm9_small_source, tmp_path, caplog):
    load_qm9(tmp_path, source_dir=qm9_small_source)
    path = _cache_file(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["ptr"] = payload["ptr"][:-1]
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="molgen.data.qm9"):
        data = load_qm9(tmp_path, source_dir=qm9_small_source)
    assert caplog.records and data.num_molecules == 200


def test_rebuild_flag_and_no_temp_files_left(qm9_small_source, tmp_path):
    load_qm9(tmp_path, source_dir=qm9_small_source)
    load_qm9(tmp_path, source_dir=qm9_small_source, rebuild=True)
    assert [p.name for p in tmp_path.iterdir()] == [_cache_file(tmp_path).name]


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLGEN_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MOLGEN_CACHE")
    assert resolve_cache_dir() == Path.home() / ".cache" / "molgen"


def test_missing_source_is_a_user_error(tmp_path):
    with pytest.raises(MolgenError, match="no qm9_part"):
        load_qm9(tmp_path, source_dir=tmp_path / "nowhere")


def test_qm9pack_missing_is_a_user_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(MolgenError, match="pip install qm9pack"):
        load_qm9(tmp_path)


# --------------------------------------------------------------------------- property specs


def test_get_property():
    assert get_property("gap").unit == "eV"
    assert get_property("Cv") is get_property("cv") is PROPERTIES["Cv"]
    assert get_property("GAP").name == "gap"
    assert DEFAULT_PROPERTIES == ("alpha", "gap", "homo", "lumo", "mu", "Cv")
    assert get_property("alpha").column == "Polarizability_bohr3"
    with pytest.raises(MolgenError) as err:
        get_property("bandgap")
    msg = str(err.value)
    assert "unknown property 'bandgap'" in msg and "alpha, gap, homo, lumo, mu, Cv" in msg
    assert "\n" not in msg


def test_property_spec_is_frozen_and_checks_ranges():
    spec = get_property("gap")
    with pytest.raises(AttributeError):
        spec.unit = "Ha"  # type: ignore[misc]
    assert spec.in_range(6.5) and not spec.in_range(600.0) and not spec.in_range(-1.0)
