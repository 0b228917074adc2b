"""Tests of molgen.data.readers: SMILES tables, SDF and XYZ files, including every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from molgen.chem.build import mol_to_smiles
from molgen.chem.elements import ATOMIC_NUMBERS, Molecule3D
from molgen.chem.io import write_sdf, write_xyz
from molgen.data.readers import (
    ERROR_REASONS,
    MoleculeRecord,
    ReadResult,
    canonical_smiles,
    read_molecules,
)
from molgen.errors import MolgenError

MOSES_SAMPLE = Path("/work/shared/benchmarks/moses/char_rnn_1.csv")


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def _embedded(smiles: str, seed: int = 7) -> Molecule3D:
    """A 3D molecule (explicit hydrogens) from an RDKit ETKDG embedding."""
    m = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(m, randomSeed=seed) == 0
    types = np.array([ATOMIC_NUMBERS.index(a.GetAtomicNum()) for a in m.GetAtoms()])
    return Molecule3D(types, m.GetConformer().GetPositions())


def _check_counts(result: ReadResult) -> None:
    """Invariants every result satisfies."""
    assert result.n_total == len(result.records)
    assert result.n_valid == sum(r.error is None for r in result.records)
    assert sum(result.invalid_reasons.values()) == result.n_total - result.n_valid
    assert [r.index for r in result.records] == list(range(result.n_total))
    for r in result.records:
        assert (r.error is None) == (r.mol is not None)
        assert r.error is None or r.error in ERROR_REASONS


# ------------------------------------------------------------------------------------------
# unreadable input: one-line MolgenError
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n\t\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.smi"
    path.write_bytes(content)
    with pytest.raises(MolgenError, match="is empty: no molecules"):
        read_molecules(path)


def test_header_only_csv_is_empty(tmp_path: Path) -> None:
    with pytest.raises(MolgenError, match="is empty: no molecules"):
        read_molecules(_write(tmp_path / "h.csv", "SMILES\n\n"))


@pytest.mark.parametrize(
    "content",
    [b"CCO\n\x00\x01\x02binary\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"CC\x80\xffO\n"],
)
def test_binary_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "blob.smi"
    path.write_bytes(content)
    with pytest.raises(MolgenError, match="binary") as info:
        read_molecules(path)
    assert "\n" not in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(MolgenError) as info:
        read_molecules(_write(tmp_path / "mols.pdb", "CCO\n"))
    message = str(info.value)
    assert "\n" not in message and ".pdb" in message
    for suffix in (".smi", ".txt", ".csv", ".sdf", ".xyz"):
        assert suffix in message
    with pytest.raises(MolgenError, match="unknown file type"):
        read_molecules(_write(tmp_path / "noext", "CCO\n"))
    with pytest.raises(MolgenError, match="unknown molecule format"):
        read_molecules(_write(tmp_path / "ok.smi", "CCO\n"), fmt="pdb")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MolgenError, match="does not exist"):
        read_molecules(tmp_path / "nope.smi")
    folder = tmp_path / "folder.smi"
    folder.mkdir()
    with pytest.raises(MolgenError, match="is a directory"):
        read_molecules(folder)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "locked.smi", "CCO\n")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)  # works even when the tests run as root
    with pytest.raises(MolgenError, match="permission denied"):
        read_molecules(path)


def test_bad_arguments(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.smi", "CCO\n")
    with pytest.raises(MolgenError, match="max_atoms"):
        read_molecules(path, max_atoms=0)
    sdf = tmp_path / "a.sdf"
    write_sdf([_embedded("C")], sdf)
    with pytest.raises(MolgenError, match="only applies to SMILES tables"):
        read_molecules(sdf, column="smiles")


# ------------------------------------------------------------------------------------------
# SMILES tables
# ------------------------------------------------------------------------------------------


def test_invalid_lines_are_counted_not_dropped(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    text = (
        "CCO\n"
        "\n"
        "not_a_molecule\n"
        "C1CC\n"  # unclosed ring: parse error
        "C(C)(C)(C)(C)C\n"  # five-valent carbon
        "c1cccc1\n"  # cannot kekulize
        "   \n"
        "c1ccccc1\n"
    )
    result = read_molecules(_write(tmp_path / "mixed.smi", text))
    _check_counts(result)
    assert result.format == "smiles" and not result.is_3d and result.smiles_column is None
    assert [r.source for r in result.records] == [
        "CCO", "not_a_molecule", "C1CC", "C(C)(C)(C)(C)C", "c1cccc1", "c1ccccc1"
    ]  # fmt: skip
    assert [r.error for r in result.records] == [
        None, "parse", "parse", "valence", "kekulize", None
    ]  # fmt: skip
    assert result.n_valid == 2 and result.validity == pytest.approx(2 / 6)
    assert result.invalid_reasons == {"parse": 2, "valence": 1, "kekulize": 1}
    assert all(r.mol3d is None for r in result.records)
    assert capfd.readouterr().err == ""  # RDKit's complaints are silenced


def test_smi_with_names_and_header(tmp_path: Path) -> None:
    text = "SMILES Name\nCCO ethanol\nc1ccccc1\tbenzene ring\nCC(=O)O acetic acid 99%\n"
    result = read_molecules(_write(tmp_path / "named.smi", text))
    _check_counts(result)
    assert result.smiles_column == "SMILES"
    assert [r.source for r in result.records] == ["CCO", "c1ccccc1", "CC(=O)O"]
    assert result.n_valid == 3
    assert canonical_smiles(result.records) == ["CCO", "c1ccccc1", "CC(=O)O"]


def test_unicode_names_bom_and_crlf(tmp_path: Path) -> None:
    text = "\ufeffCCO éthanol ☃\r\nOCC 乙醇\r\n\r\nC1CC 🚫\r\n"
    path = tmp_path / "unicode.smi"
    path.write_bytes(text.encode("utf-8"))
    result = read_molecules(path)
    _check_counts(result)
    assert [r.source for r in result.records] == ["CCO", "OCC", "C1CC"]
    assert [r.error for r in result.records] == [None, None, "parse"]

    csv_path = tmp_path / "unicode.csv"
    csv_path.write_bytes("\ufeffsmiles,name\r\nCCO,éthanol\r\nN#N,\"di, nitrogen\"\r\n".encode())
    result = read_molecules(csv_path)
    assert result.smiles_column == "smiles"  # the BOM is not part of the column name
    assert [r.source for r in result.records] == ["CCO", "N#N"] and result.n_valid == 2


def test_utf16_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "windows.txt"
    path.write_bytes("SMILES\r\nCCO\r\nCCN\r\n".encode("utf-16"))
    result = read_molecules(path)
    assert result.n_total == 2 and result.n_valid == 2


def test_duplicates_are_kept(tmp_path: Path) -> None:
    result = read_molecules(_write(tmp_path / "dups.smi", "CCO\nCCO\nOCC\n[H]OC([H])([H])C\n"))
    _check_counts(result)
    assert result.n_total == 4 and result.n_valid == 4
    assert canonical_smiles(result.records) == ["CCO"] * 4


def test_unsupported_elements_valid_for_smiles(tmp_path: Path) -> None:
    result = read_molecules(_write(tmp_path / "moses_like.smi", "CCS\nClc1ccccc1Br\n[Na+].[Cl-]\n"))
    _check_counts(result)
    assert result.n_valid == 3


def test_too_many_atoms(tmp_path: Path) -> None:
    # 200 carbons carry 402 hydrogens: 602 atoms > 500; 150 carbons: 452 atoms
    text = "C" * 200 + "\n" + "C" * 150 + "\nCCO\n"
    result = read_molecules(_write(tmp_path / "big.smi", text))
    _check_counts(result)
    assert [r.error for r in result.records] == ["too_many_atoms", None, None]
    assert result.invalid_reasons == {"too_many_atoms": 1}
    small = read_molecules(_write(tmp_path / "big.smi", text), max_atoms=8)
    assert [r.error for r in small.records] == ["too_many_atoms"] * 3
    assert read_molecules(tmp_path / "big.smi", max_atoms=9).records[2].error is None  # CCO: 9


def test_csv_with_header_named_column(tmp_path: Path) -> None:
    text = "id,score,canonical_smiles\n1,0.5,CCO\n2,0.7,\n3,0.1,C1CC\n,,\n4,0.9,c1ccccc1\n"
    result = read_molecules(_write(tmp_path / "scored.csv", text))
    _check_counts(result)
    assert result.format == "csv" and result.smiles_column == "canonical_smiles"
    assert [r.source for r in result.records] == ["CCO", "", "C1CC", "c1ccccc1"]
    assert [r.error for r in result.records] == [None, "empty", "parse", None]


def test_csv_header_without_smiles_name(tmp_path: Path) -> None:
    text = "name;structure;logP\nethanol;CCO;-0.1\nbenzene;c1ccccc1;1.7\nbad;C1CC;0\n"
    result = read_molecules(_write(tmp_path / "semicolon.csv", text))
    _check_counts(result)
    assert result.smiles_column == "structure"
    assert [r.source for r in result.records] == ["CCO", "c1ccccc1", "C1CC"]


def test_csv_without_header(tmp_path: Path) -> None:
    result = read_molecules(_write(tmp_path / "plain.csv", "CCO,1.5\nc1ccccc1,2.0\nCC(C,3\n"))
    _check_counts(result)
    assert result.smiles_column is None
    assert [r.source for r in result.records] == ["CCO", "c1ccccc1", "CC(C"]
    assert result.n_valid == 2
    # SMILES in the second column, found by parsing
    tabbed = _write(tmp_path / "second.csv", "ethanol\tCCO\nwater\tO\nbenzene\tc1ccccc1\n")
    result = read_molecules(tabbed)
    assert [r.source for r in result.records] == ["CCO", "O", "c1ccccc1"]
    # single column, first line an invalid SMILES: it is a molecule, not a header
    result = read_molecules(_write(tmp_path / "single.csv", "C1CC\nCCO\n"))
    assert [r.error for r in result.records] == ["parse", None]


def test_csv_column_option(tmp_path: Path) -> None:
    text = "smiles,parent\nCCO,c1ccccc1\nCCN,CCC\n"
    path = _write(tmp_path / "two.csv", text)
    assert [r.source for r in read_molecules(path).records] == ["CCO", "CCN"]
    result = read_molecules(path, column="parent")
    assert result.smiles_column == "parent"
    assert [r.source for r in result.records] == ["c1ccccc1", "CCC"]
    assert read_molecules(path, column="PARENT").smiles_column == "parent"
    with pytest.raises(MolgenError) as info:
        read_molecules(path, column="molecule")
    message = str(info.value)
    assert "'molecule' not found" in message and "'smiles'" in message and "'parent'" in message
    headerless = _write(tmp_path / "headerless.csv", "CCO,1\nCCN,2\n")
    with pytest.raises(MolgenError, match="no header row"):
        read_molecules(headerless, column="smiles")


def test_csv_without_a_smiles_column(tmp_path: Path) -> None:
    with pytest.raises(MolgenError, match="column="):
        read_molecules(_write(tmp_path / "numbers.csv", "a,b\n1,2\n3,4\n"))


def test_txt_holding_csv_and_fmt_override(tmp_path: Path) -> None:
    result = read_molecules(_write(tmp_path / "out.txt", "SMILES,score\nCCO,1\nCCN,2\n"))
    assert result.format == "csv" and result.n_valid == 2
    result = read_molecules(_write(tmp_path / "out.dat", "CCO\nCCN\n"), fmt="smi")
    assert result.format == "smiles" and result.n_total == 2


def test_gzip_compressed(tmp_path: Path) -> None:
    path = tmp_path / "mols.csv.gz"
    path.write_bytes(gzip.compress(b"SMILES\nCCO\nC1CC\n"))
    result = read_molecules(path)
    assert result.format == "csv" and result.n_total == 2 and result.n_valid == 1


# ------------------------------------------------------------------------------------------
# SDF
# ------------------------------------------------------------------------------------------


def test_sdf_3d_round_trip(tmp_path: Path) -> None:
    mols = [_embedded("CCO"), _embedded("C=CC#N"), _embedded("O=C(O)C")]
    mols[0].properties["energy"] = -1.25
    path = tmp_path / "gen.sdf"
    write_sdf(mols, path)
    result = read_molecules(path)
    _check_counts(result)
    assert result.format == "sdf" and result.is_3d and result.n_valid == 3
    assert [r.source for r in result.records] == ["mol_0", "mol_1", "mol_2"]
    for original, record in zip(mols, result.records, strict=True):
        assert record.mol3d is not None
        np.testing.assert_array_equal(record.mol3d.atom_types, original.atom_types)
        np.testing.assert_allclose(record.mol3d.positions, original.positions, atol=1e-4)
        assert record.mol.GetNumAtoms() == original.num_atoms  # hydrogens kept as given
    assert result.records[0].mol3d.properties == {"energy": -1.25}
    # bonds are the ones write_sdf stored (EDM's, inferred from the ETKDG geometry)
    assert canonical_smiles(result.records)[:2] == ["CCO", "C=CC#N"]
    assert canonical_smiles(result.records, largest_fragment_only=True, isomeric=False) == [
        mol_to_smiles(m) for m in mols
    ]


def test_sdf_record_without_coordinates_keeps_the_file_3d(tmp_path: Path) -> None:
    """A molecule written without a structure (a failed embedding: every atom at the origin, as
    write_sdf writes NaN positions) is counted as ``no_coordinates`` and unstable; the others stay 3D."""
    from molgen.chem.stability import stability_counts

    good = [_embedded("CCO"), _embedded("CC=O")]
    failed = _embedded("OCC#N")
    failed.bonds = np.zeros((failed.num_atoms, failed.num_atoms), dtype=np.int64)
    failed.positions = np.full_like(failed.positions, np.nan)
    write_sdf([good[0], failed, good[1]], tmp_path / "mixed.sdf")
    result = read_molecules(tmp_path / "mixed.sdf")
    _check_counts(result)
    assert result.is_3d and result.n_valid == 2
    assert [r.error for r in result.records] == [None, "no_coordinates", None]
    assert np.isnan(result.records[1].mol3d.positions).all()
    counts = stability_counts([r.mol3d for r in result.records])
    assert counts["mol_stability"] == pytest.approx(2 / 3)  # the molecule without a structure counts, unstable


def test_sdf_corrupt_record_among_good_ones(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    blocks = []
    for i, smi in enumerate(["CCO", "c1ccccc1", "CCN", "C(C)(C)(C)(C)C"]):
        m = Chem.MolFromSmiles(smi, sanitize=False)
        m.SetProp("_Name", f"rec{i}")
        blocks.append(Chem.MolToMolBlock(m, kekulize=False))
    lines = blocks[1].split("\n")
    lines[3] = "  this is not a counts line"
    blocks[1] = "\n".join(lines)
    blocks[2] += ">  <note>\nhello\n\n"  # a data field after M  END
    text = "$$$$\n".join(blocks) + "$$$$\n\n"
    result = read_molecules(_write(tmp_path / "broken.sdf", text))
    _check_counts(result)
    assert not result.is_3d  # 2D coordinates
    assert [r.source for r in result.records] == ["rec0", "rec1", "rec2", "rec3"]
    assert [r.error for r in result.records] == [None, "corrupt_record", None, "valence"]
    assert all(r.mol3d is None for r in result.records)
    assert capfd.readouterr().err == ""


def test_sdf_elements_2d_vs_3d(tmp_path: Path) -> None:
    chlorine = Chem.MolFromSmiles("ClCCS")
    flat = tmp_path / "flat.sdf"
    _write(flat, Chem.MolToMolBlock(chlorine) + "$$$$\n")
    result = read_molecules(flat)
    assert not result.is_3d and result.n_valid == 1  # 2D: any element is fine

    m = Chem.AddHs(chlorine)
    AllChem.EmbedMolecule(m, randomSeed=1)
    solid = tmp_path / "solid.sdf"
    write_sdf([_embedded("CO")], solid)
    _write(solid, solid.read_text() + Chem.MolToMolBlock(m) + "$$$$\n")
    result = read_molecules(solid)
    _check_counts(result)
    assert result.is_3d
    assert [r.error for r in result.records] == [None, "unsupported_element"]
    assert result.records[0].mol3d is not None and result.records[1].mol3d is None


def test_sdf_too_many_atoms(tmp_path: Path) -> None:
    path = tmp_path / "big.sdf"
    _write(path, Chem.MolToMolBlock(Chem.MolFromSmiles("C" * 200)) + "$$$$\n")
    assert read_molecules(path).records[0].error == "too_many_atoms"  # 200 C + 402 implicit H


# ------------------------------------------------------------------------------------------
# XYZ
# ------------------------------------------------------------------------------------------


def test_xyz_multi_molecule_bonds_inferred(tmp_path: Path) -> None:
    mols = [_embedded("CCO"), _embedded("C#N"), _embedded("CC(=O)N")]
    mols[1].properties["gap"] = 0.3
    path = tmp_path / "gen.xyz"
    write_xyz(mols, path)
    result = read_molecules(path)
    _check_counts(result)
    assert result.format == "xyz" and result.is_3d and result.n_total == 3 and result.n_valid == 3
    assert result.records[0].source.startswith("smiles=")
    assert result.records[1].mol3d.properties == {"gap": 0.3}
    assert result.records[0].mol.GetNumBonds() == 8  # inferred: 2 heavy bonds + 6 C-H/O-H
    assert canonical_smiles(result.records, largest_fragment_only=True, isomeric=False) == [
        mol_to_smiles(m) for m in mols
    ]
    assert canonical_smiles(result.records) == ["CCO", "C#N", "CC(N)=O"]


def test_xyz_bad_blocks_and_unsupported_elements(tmp_path: Path) -> None:
    water = "3\nwater\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n"
    text = (
        water
        + "2\nhydrogen sulfide fragment\nS 0.0 0.0 0.0\nH 1.34 0.0 0.0\n"  # unsupported
        + "2\nbad coordinates\nC 0.0 0.0 zero\nH 1.0 0.0 0.0\n"  # corrupt
        + "garbage line\nmore garbage\n"  # corrupt region, then resync
        + "2\nunknown element\nXx 0 0 0\nH 1 0 0\n"  # corrupt
        + "0\nno atoms\n"  # empty
        + "\n\n"
        + water.replace("water", "water again")
        + "5\ntruncated\nC 0 0 0\n"  # file ends inside the block
    )
    result = read_molecules(_write(tmp_path / "mixed.xyz", text))
    _check_counts(result)
    assert [r.source for r in result.records] == [
        "water", "hydrogen sulfide fragment", "bad coordinates", "garbage line",
        "unknown element", "no atoms", "water again", "truncated",
    ]  # fmt: skip
    assert [r.error for r in result.records] == [
        None, "unsupported_element", "corrupt_record", "corrupt_record",
        "corrupt_record", "empty", None, "corrupt_record",
    ]  # fmt: skip
    assert canonical_smiles(result.records)[0] == "O"
    assert result.records[0].mol3d is not None and result.records[1].mol3d is None


def test_xyz_too_many_atoms(tmp_path: Path) -> None:
    n = 501
    rows = "".join(f"C {i * 3.0:.1f} 0.0 0.0\n" for i in range(n))
    result = read_molecules(_write(tmp_path / "big.xyz", f"{n}\nhuge\n{rows}"))
    assert result.records[0].error == "too_many_atoms" and result.records[0].mol3d is None


# ------------------------------------------------------------------------------------------
# the published MOSES sample
# ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not MOSES_SAMPLE.exists(), reason="MOSES sample file not available")
def test_moses_char_rnn_sample() -> None:
    result = read_molecules(MOSES_SAMPLE)
    assert result.format == "csv" and result.smiles_column == "SMILES"
    assert result.n_total == 30_000
    assert result.validity == pytest.approx(0.988433, abs=0.002)  # MOSES published "valid"
    assert isinstance(result.records[0], MoleculeRecord)
    assert set(result.invalid_reasons) <= {"parse", "valence", "kekulize", "other"}
