"""Reading the torch files molgen writes without running code, and checking that their weights are intact.

A ``.pt`` file is a pickle: ``torch.load(..., weights_only=False)`` runs whatever code the file
names, so a crafted checkpoint (a download, an MLflow artifact on a shared server) would run code
on the reader's machine. molgen writes only tensors and plain data (dicts, lists, strings,
numbers) and reads with ``weights_only=True``, which refuses anything else. A file that needs more
is refused with one line naming the converter for files the user trusts
(``scripts/convert_checkpoint.py``).

Integrity: a file carries ``integrity = {"sha256": ...}``, the SHA-256 of its weight tensors
(:func:`weights_digest` over the named state dicts: names, dtypes, shapes and bytes), so a
bit-flipped file is refused instead of loading with silently changed weights. Files written before
the digest existed load without the check.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from molgen.errors import MolgenError

CONVERTER = "python scripts/convert_checkpoint.py IN.pt OUT.pt"


def weights_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the tensors in ``state`` (nested mappings of tensors), in sorted key order."""
    h = hashlib.sha256()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key in sorted(node, key=str):
                walk(f"{prefix}/{key}", node[key])
        elif isinstance(node, torch.Tensor):
            t = node.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())

    walk("", state)
    return h.hexdigest()


def with_integrity(payload: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``payload`` with ``integrity`` = the digest of its entries ``keys`` (those present)."""
    covered = [k for k in keys if payload.get(k) is not None]
    return {**payload, "integrity": {"keys": covered, "sha256": weights_digest({k: payload[k] for k in covered})}}


def safe_torch_load(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors, then the integrity check.

    Args:
        path: the file.
        what: how errors name it ("checkpoint", "oracle weights").
        map_location: as for ``torch.load``.

    Raises:
        MolgenError: missing, unreadable, holding Python objects beyond plain data, or failing
            its integrity check.
    """
    path = Path(path)
    if not path.is_file():
        raise MolgenError(f"{what} not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a pickle that names code: random or truncated bytes
            raise MolgenError(f"corrupted or unreadable {what}: {path}") from None
        raise MolgenError(f"refused {what} {path}: it holds Python objects, not only tensors and plain data, and "
                          f"loading it could run code; if you trust the file, convert it: {CONVERTER}") from None
    except Exception:  # noqa: BLE001 - a random or truncated file: MemoryError, OverflowError, zip errors, ...
        raise MolgenError(f"corrupted or unreadable {what}: {path}") from None
    check = payload.get("integrity") if isinstance(payload, dict) else None
    if check is not None:
        keys = tuple(check.get("keys", ())) if isinstance(check, dict) else ()
        if not isinstance(check, dict) or weights_digest({k: payload.get(k) for k in keys}) != check.get("sha256"):
            raise MolgenError(f"{what} {path} failed its integrity check: its weights changed after it was written")
    return payload
