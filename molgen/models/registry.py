"""Registry of generative families: ``--model`` names -> Generator classes."""

from __future__ import annotations

from typing import Callable, TypeVar

from molgen.errors import MolgenError
from molgen.models.base import Generator

FAMILIES: dict[str, type[Generator]] = {}
G = TypeVar("G", bound=type[Generator])


def register(name: str) -> Callable[[G], G]:
    """Class decorator: make a family available as ``--model name``."""

    def deco(cls: G) -> G:
        cls.name = name
        FAMILIES[name] = cls
        return cls

    return deco


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
