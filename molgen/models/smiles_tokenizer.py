"""SMILES tokens for the ``smiles-ar`` family: a regex tokenizer, a fixed vocabulary, atom bookkeeping.

The tokenizer is the regular expression of the Molecular Transformer (Schwaller et al., "Molecular
Transformer", ACS Cent. Sci. 2019): one token per bracket atom (``[NH3+]``, ``[nH]``, ``[H]``), per
organic-subset atom (two-letter ``Cl``/``Br`` first), bond (``- = # : / \\ ~``), branch, dot and
ring closure (``1``..``9`` and ``%nn``). ``"".join(tokenize(s)) == s`` for every SMILES it accepts.

The vocabulary is fixed by the grammar, not learned from data, so a checkpoint rebuilds it from
nothing: the organic-subset and bracket atoms of molgen's elements (H, C, N, O, F; aromatic c, n, o;
bracket atoms with 0-4 hydrogens and charge 0/+1/-1, no chirality, no isotopes), bonds, branches,
ring closures 1-9 and %10-%99, plus ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>`` (any other token,
e.g. ``Cl``; a model never emits it).

:func:`explicit_h_smiles` writes the training strings: RDKit ``AddHs`` then canonical
``MolToSmiles`` without stereochemistry, so every atom, hydrogens included, is one token and the
atom count of a string is the molecule's atom count as QM9 counts it.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import Tensor

from molgen.chem.elements import ELEMENT_INDEX, ELEMENTS
from molgen.errors import MolgenError

#: Molecular Transformer SMILES regex (Schwaller et al. 2019).
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)
#: Inside a bracket atom: isotope, element symbol, chirality, hydrogen count, charge, atom map.
_BRACKET = re.compile(r"^\[(\d*)([A-Z][a-z]?|[a-z][a-z]?|\*)(@*)(H\d*)?([+-]+\d*)?(:\d+)?\]$")
_ORGANIC = {"B", "C", "N", "O", "P", "S", "F", "Cl", "Br", "I", "b", "c", "n", "o", "s", "p", "*"}

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
BONDS = ("-", "=", "#", ":", "/", "\\", "~")


def tokenize(smiles: str) -> list[str]:
    """Split a SMILES string into tokens; raises :class:`MolgenError` on characters it cannot read."""
    tokens = SMILES_REGEX.findall(smiles)
    if "".join(tokens) != smiles:
        raise MolgenError(f"cannot tokenize SMILES '{smiles}'")
    return tokens


def is_atom_token(token: str) -> bool:
    """Whether ``token`` is an atom (bracket atom or organic-subset symbol)."""
    return token in _ORGANIC or (token.startswith("[") and _BRACKET.match(token) is not None)


def atom_symbol(token: str) -> str:
    """Element symbol of an atom token, capitalized (``"c"`` -> ``"C"``, ``"[nH]"`` -> ``"N"``)."""
    if token.startswith("["):
        m = _BRACKET.match(token)
        if m is None:
            raise MolgenError(f"'{token}' is not an atom token")
        sym = m.group(2)
    else:
        sym = token
    return sym[0].upper() + sym[1:]


def atom_charge(token: str) -> int:
    """Formal charge written in an atom token (0 for organic-subset atoms)."""
    m = _BRACKET.match(token) if token.startswith("[") else None
    if m is None or not m.group(5):
        return 0
    text = m.group(5)
    sign = 1 if text[0] == "+" else -1
    digits = text.lstrip("+-")
    return sign * (int(digits) if digits else len(text))


def _bracket_atoms() -> list[str]:
    out = []
    for sym in ("H", "C", "N", "O", "F", "c", "n", "o"):
        for hs in ("", "H", "H2", "H3", "H4"):
            if sym == "H" and hs:
                continue
            for charge in ("", "+", "-"):
                out.append(f"[{sym}{hs}{charge}]")
    return out


class Vocabulary:
    """Token <-> id maps and per-token classes used by constrained decoding.

    Args:
        tokens: the non-special tokens, in id order after the four special ones.

    Attributes (bool ``[V]`` tensors): ``is_atom``, ``is_special`` (pad/bos/unk, never emitted),
    ``opens`` (tokens that need a later atom: atoms, ``(`` and ``.``); ``eos`` is the end id.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens: list[str] = [PAD, BOS, EOS, UNK, *tokens]
        self.index: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in the vocabulary")
        self.pad, self.bos, self.eos, self.unk = (self.index[t] for t in (PAD, BOS, EOS, UNK))
        self.is_atom = torch.tensor([is_atom_token(t) for t in self.tokens])
        self.is_special = torch.zeros(len(self.tokens), dtype=torch.bool)
        self.is_special[[self.pad, self.bos, self.unk]] = True
        self.opens = self.is_atom | torch.tensor([t in ("(", ".") for t in self.tokens])
        # element index / charge of each atom token (-1 / 0 for the others)
        self.element = torch.tensor(
            [ELEMENT_INDEX.get(atom_symbol(t), -1) if is_atom_token(t) else -1 for t in self.tokens]
        )

    @classmethod
    def default(cls) -> "Vocabulary":
        """The fixed vocabulary of molgen's elements (see the module docstring)."""
        organic = ["C", "N", "O", "F", "c", "n", "o"]
        other = [*BONDS, ".", "(", ")"]
        rings = [str(i) for i in range(1, 10)] + [f"%{i}" for i in range(10, 100)]
        return cls(organic + _bracket_atoms() + other + rings)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, smiles: str) -> list[int]:
        """Token ids of ``smiles`` (no bos/eos; unknown tokens -> ``<unk>``)."""
        return [self.index.get(t, self.unk) for t in tokenize(smiles)]

    def decode(self, ids: Sequence[int]) -> str:
        """Join tokens up to the first ``<eos>``, skipping special ids."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i not in (self.pad, self.bos):
                out.append(self.tokens[i])
        return "".join(out)


def parse_atoms(tokens: Sequence[str]) -> tuple[list[int], list[int]]:
    """Element indices (into :data:`ELEMENTS`) and formal charges of the atom tokens, in order.

    Raises:
        MolgenError: for an atom outside molgen's elements.
    """
    types, charges = [], []
    for t in tokens:
        if is_atom_token(t):
            sym = atom_symbol(t)
            if sym not in ELEMENT_INDEX:
                raise MolgenError(f"atom '{t}' is not one of {', '.join(ELEMENTS)}")
            types.append(ELEMENT_INDEX[sym])
            charges.append(atom_charge(t))
    return types, charges


def explicit_h_smiles(smiles: str) -> str | None:
    """Canonical SMILES with every hydrogen as an atom (``[H]``), no stereo; ``None`` if unparsable."""
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    _block = BlockLogs()  # noqa: F841
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return Chem.MolToSmiles(Chem.AddHs(mol), isomericSmiles=False)


def count_atoms(ids: Tensor, vocab: Vocabulary) -> Tensor:
    """Number of atom tokens per row of ``ids [B, T]``."""
    return vocab.is_atom.to(ids.device)[ids].sum(-1)
