"""The datasets a run can train on, by the name in ``data.dataset``.

A loader takes the processed-cache folder (``data.cache_dir``; ``None`` for the default) and
returns the dataset object the trainer works with (today :class:`~molgen.data.qm9.QM9Data`: ragged
atom tensors, properties, SMILES). Loaders import their module lazily, so this registry is cheap to
import (``molgen.config`` checks names against it).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from molgen.errors import MolgenError

Loader = Callable[["str | os.PathLike | None"], Any]

_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make ``loader`` the dataset called ``name``."""

    def wrap(loader: Loader) -> Loader:
        _LOADERS[name] = loader
        return loader

    return wrap


def available_datasets() -> list[str]:
    """The registered names, sorted."""
    return sorted(_LOADERS)


def check_dataset(name: str) -> str:
    """``name`` if registered, else a one-line :class:`MolgenError` listing the available ones."""
    if name not in _LOADERS:
        raise MolgenError(f"unknown dataset '{name}' (available: {', '.join(available_datasets())})")
    return name


def load_dataset(name: str, cache_dir: str | os.PathLike | None = None) -> Any:
    """Load the dataset ``name`` (see :func:`available_datasets`) from ``cache_dir``."""
    return _LOADERS[check_dataset(name)](cache_dir)


@register_dataset("qm9")
def _load_qm9(cache_dir: str | os.PathLike | None = None) -> Any:
    from molgen.data.qm9 import load_qm9

    return load_qm9(cache_dir)
