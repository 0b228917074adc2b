"""The QM9 molecular properties molgen knows: names, source columns, user units, physical ranges.

Every property is stored and shown in its *user* unit (eV for orbital energies, Debye for the dipole
moment, ...). ``factor`` converts the value written in the qm9pack CSV column into that unit:
``user_value = csv_value * factor``. ``low``/``high`` are generous hard physical limits used to
reject nonsensical user input (e.g. ``--target gap=600``); they are not the data range.
"""

from __future__ import annotations

from dataclasses import dataclass

from molgen.errors import MolgenError

#: 1 Hartree in electronvolts (CODATA 2018, as used by the QM9 literature).
HARTREE_TO_EV: float = 27.211386


@dataclass(frozen=True)
class PropertySpec:
    """One graph-level QM9 property.

    Args:
        name: molgen's name for it (``--condition`` / ``--target`` key), e.g. ``"gap"``.
        column: the qm9pack CSV column holding it.
        unit: the user unit, as printed (e.g. ``"eV"``).
        factor: multiply the CSV value by this to get the user unit.
        low: smallest physically sensible value, in the user unit.
        high: largest physically sensible value, in the user unit.
        description: a short human description.
    """

    name: str
    column: str
    unit: str
    factor: float
    low: float
    high: float
    description: str

    def in_range(self, value: float) -> bool:
        """Whether ``value`` (user unit) lies inside the hard physical range ``[low, high]``."""
        return self.low <= value <= self.high


def _spec(name: str, column: str, unit: str, factor: float, low: float, high: float, desc: str):
    return name, PropertySpec(name, column, unit, factor, low, high, desc)


#: All known properties, in a fixed order (this order is the column order of
#: :attr:`molgen.data.qm9.QM9Data.properties`).
PROPERTIES: dict[str, PropertySpec] = dict(
    [
        _spec("alpha", "Polarizability_bohr3", "Bohr^3", 1.0, 0.0, 500.0,
              "isotropic polarizability"),
        _spec("gap", "HOMO_LUMO_gap_au", "eV", HARTREE_TO_EV, 0.0, 30.0,
              "HOMO-LUMO gap"),
        _spec("homo", "HOMO_au", "eV", HARTREE_TO_EV, -30.0, 0.0,
              "energy of the highest occupied molecular orbital"),
        _spec("lumo", "LUMO_au", "eV", HARTREE_TO_EV, -15.0, 15.0,
              "energy of the lowest unoccupied molecular orbital"),
        # QM9's largest dipole moment is 29.56 D, so the bound sits well above 30.
        _spec("mu", "Dipole_debye", "D", 1.0, 0.0, 50.0,
              "dipole moment"),
        _spec("Cv", "Heatcapacity_Cv_cal_mol_K", "cal/(mol K)", 1.0, 0.0, 100.0,
              "heat capacity at 298.15 K"),
        _spec("r2", "R2_bohr2", "Bohr^2", 1.0, 0.0, 10000.0,
              "electronic spatial extent"),
        _spec("zpve", "ZPVE_au", "eV", HARTREE_TO_EV, 0.0, 20.0,
              "zero-point vibrational energy"),
        # Total energies: ~-2e4 eV, so float32 storage rounds them to ~1 meV.
        _spec("U0", "InternalEnergy_0K_au", "eV", HARTREE_TO_EV, -30000.0, 0.0,
              "total internal energy at 0 K"),
        _spec("U", "InternalEnergy_298K_au", "eV", HARTREE_TO_EV, -30000.0, 0.0,
              "total internal energy at 298.15 K"),
        _spec("H", "Enthalphy_298K_au", "eV", HARTREE_TO_EV, -30000.0, 0.0,
              "total enthalpy at 298.15 K"),
        _spec("G", "GibbsFreeEnergy_298K_au", "eV", HARTREE_TO_EV, -30000.0, 0.0,
              "total Gibbs free energy at 298.15 K"),
    ]
)

#: The properties conditional-generation papers (EDM and successors) report on.
DEFAULT_PROPERTIES: tuple[str, ...] = ("alpha", "gap", "homo", "lumo", "mu", "Cv")


def get_property(name: str) -> PropertySpec:
    """Look up a property by name; an exact match wins, else a unique case-insensitive one.

    Raises:
        MolgenError: if ``name`` is not a known property; the message lists the choices.
    """
    if name in PROPERTIES:
        return PROPERTIES[name]
    matches = [spec for key, spec in PROPERTIES.items() if key.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    raise MolgenError(f"unknown property '{name}'; choose from {', '.join(PROPERTIES)}")
