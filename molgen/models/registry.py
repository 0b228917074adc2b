"""Registry of generative families: ``--model`` names -> Generator classes.

A family module registers its class with :func:`molgen.models.base.register`; this module imports
the built-in family modules (one line each in :func:`_load_builtin`) and looks names up. The
families import only the base, never this module, so there is no import loop.
"""

from __future__ import annotations

from molgen.errors import MolgenError
from molgen.models.base import FAMILIES, Generator


def _load_builtin() -> None:
    # importing the modules runs their @register decorators
    from molgen.models import diffusion  # noqa: F401
    from molgen.models import ebm  # noqa: F401
    from molgen.models import flow  # noqa: F401
    from molgen.models import flow_matching  # noqa: F401
    from molgen.models import score  # noqa: F401
    from molgen.models import smiles_ar  # noqa: F401
    from molgen.models import vae  # noqa: F401


def family_names() -> list[str]:
    _load_builtin()
    return sorted(FAMILIES)


def get_family(name: str) -> type[Generator]:
    _load_builtin()
    if name not in FAMILIES:
        raise MolgenError(f"unknown model family '{name}' (choose from: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]
