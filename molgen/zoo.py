"""Pretrained generators that ship inside the package (``molgen generate --pretrained NAME``).

The weights live in ``molgen/pretrained/<name>.pt`` as slim molgen checkpoints (config, dataset
statistics, EMA weights; no optimizer state), and ``molgen/pretrained/models.json`` describes each
one: family, conditioning properties, the command that trained it, the machine and time it took,
and what it measured. ``scripts/export_pretrained.py`` writes both from a training run, atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from molgen.errors import MolgenError

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = "models.json"
#: The largest file a pretrained model may be (the repository ships them).
MAX_BYTES = 20 * 1024 * 1024


@dataclass
class PretrainedModel:
    """One entry of the manifest (``file`` is relative to the manifest's folder)."""

    name: str
    file: str
    family: str
    properties: list[str]
    description: str
    command: str
    machine: str
    training_time: str
    results: dict[str, Any] = field(default_factory=dict)


def manifest_path(folder: str | os.PathLike | None = None) -> Path:
    return Path(folder or PRETRAINED_DIR) / MANIFEST


def load_manifest(folder: str | os.PathLike | None = None) -> dict[str, PretrainedModel]:
    """Name -> entry; an absent manifest is an empty zoo, an unreadable one a one-line error."""
    path = manifest_path(folder)
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {name: PretrainedModel(name=name, **entry) for name, entry in raw.items()}
    except (OSError, ValueError, TypeError) as exc:
        raise MolgenError(f"unreadable pretrained-model manifest {path}: {exc}") from None


def pretrained_names(folder: str | os.PathLike | None = None) -> list[str]:
    """The shipped names, sorted (empty when the manifest is unreadable: ``--help`` must still work)."""
    try:
        return sorted(load_manifest(folder))
    except MolgenError:
        return []


def pretrained_checkpoint(name: str, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of ``name``; one-line errors for unknown names and missing files."""
    zoo = load_manifest(folder)
    if name not in zoo:
        known = ", ".join(sorted(zoo)) or "none"
        raise MolgenError(f"unknown pretrained model '{name}'; shipped: {known}")
    path = manifest_path(folder).parent / zoo[name].file
    if not path.is_file():
        raise MolgenError(f"pretrained model '{name}' is listed but its file is missing: {path}")
    return path


def add_to_manifest(entry: PretrainedModel, folder: str | os.PathLike | None = None) -> Path:
    """Insert or replace ``entry`` in the manifest (written atomically, names sorted)."""
    from molgen.io_utils import atomic_open

    zoo = load_manifest(folder)
    zoo[entry.name] = entry
    raw = {name: {k: v for k, v in asdict(e).items() if k != "name"} for name, e in sorted(zoo.items())}
    path = manifest_path(folder)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(raw, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    return path


def export_pretrained(checkpoint: str | os.PathLike, entry: PretrainedModel,
                      folder: str | os.PathLike | None = None) -> Path:
    """Write a slim copy of a training checkpoint (EMA weights only) as ``<folder>/<name>.pt`` and
    list it in the manifest; the copy must rebuild its model and fit in :data:`MAX_BYTES`."""
    from molgen.checkpoint import (
        load_checkpoint,
        model_from_checkpoint,
        save_checkpoint,
    )

    payload = load_checkpoint(checkpoint)
    weights = payload.get("ema") if payload.get("ema") is not None else payload["model"]
    dst = Path(folder or PRETRAINED_DIR) / f"{entry.name}.pt"
    keep = {k: payload[k] for k in ("step", "epoch", "run_id") if k in payload}
    tmp = dst.with_name(dst.name + ".export")
    save_checkpoint(tmp, config=payload["config"], stats=payload["stats"], model=weights, **keep)
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise MolgenError(f"{entry.name}: {size / 2**20:.1f} MiB exceeds the {MAX_BYTES / 2**20:.0f} MiB limit")
    model = model_from_checkpoint(load_checkpoint(tmp))
    if model.name != entry.family or list(model.properties) != list(entry.properties):
        tmp.unlink()
        raise MolgenError(f"{entry.name}: checkpoint is {model.name} on {model.properties}, "
                          f"not {entry.family} on {entry.properties}")
    os.replace(tmp, dst)
    add_to_manifest(PretrainedModel(**{**asdict(entry), "file": dst.name}), folder)
    return dst
