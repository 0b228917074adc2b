"""Parse ``--target PROP=VALUE[UNIT]`` into values in molgen's user units, with range checks."""

from __future__ import annotations

import re
from typing import Iterable

from molgen.data.properties import HARTREE_TO_EV, get_property
from molgen.errors import MolgenError

# unit spellings (lower-case, spaces removed) -> (canonical user unit, factor to it)
_UNITS: dict[str, tuple[str, float]] = {
    "ev": ("eV", 1.0),
    "mev": ("eV", 1e-3),
    "ha": ("eV", HARTREE_TO_EV),
    "hartree": ("eV", HARTREE_TO_EV),
    "d": ("D", 1.0),
    "debye": ("D", 1.0),
    "bohr^3": ("Bohr^3", 1.0),
    "bohr3": ("Bohr^3", 1.0),
    "a0^3": ("Bohr^3", 1.0),
    "cal/(molk)": ("cal/(mol K)", 1.0),
    "cal/mol/k": ("cal/(mol K)", 1.0),
    "cal/molk": ("cal/(mol K)", 1.0),
    "bohr^2": ("Bohr^2", 1.0),
    "bohr2": ("Bohr^2", 1.0),
}

_TARGET = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def parse_target(text: str, *, check_range: bool = True, flag: str = "--target") -> tuple[str, float]:
    """``"gap=6.5eV"`` -> ``("gap", 6.5)``; ``"gap=150meV"`` -> ``("gap", 0.15)``; unitless = user unit.

    ``check_range=False`` skips the physical-range check (for differences such as ``--tol``).
    """
    match = _TARGET.match(text)
    if not match:
        raise MolgenError(f"malformed {flag} '{text}': expected PROP=VALUE[UNIT], e.g. gap=6.5eV")
    name, number, unit = match.groups()
    spec = get_property(name)
    value = float(number)
    if unit:
        key = unit.lower().replace(" ", "")
        if key not in _UNITS or _UNITS[key][0] != spec.unit:
            raise MolgenError(f"unit '{unit}' does not fit property '{spec.name}' (its unit is {spec.unit})")
        value *= _UNITS[key][1]
    if check_range and not spec.in_range(value):
        raise MolgenError(
            f"target {spec.name}={value:g} {spec.unit} is outside the physical range [{spec.low:g}, {spec.high:g}]"
        )
    return spec.name, value


def parse_targets(items: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        name, value = parse_target(item)
        if name in out:
            raise MolgenError(f"--target {name} given twice")
        out[name] = value
    return out
