"""Typed configuration.

A run is described by one :class:`RunConfig`: data, backbone, the family's own section and the
training loop. It is resolved in layers — dataclass defaults, ``configs/<family>.yaml``, an optional
preset (``configs/presets/<name>.yaml``), a user ``--config`` file, ``--set key=value`` overrides,
then the explicit CLI flags — and saved inside every checkpoint, so a checkpoint rebuilds its model
with no other file. Unknown keys and values of the wrong type are rejected with a one-line error.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from molgen.errors import MolgenError


@dataclass
class DataConfig:
    """Which molecules to train on.

    Args:
        dataset: a name of :mod:`molgen.data.datasets` (only ``qm9`` for now).
        cache_dir: processed-cache folder (default ``$MOLGEN_CACHE`` or ``~/.cache/molgen``).
        split: ``train`` (EDM's 100k), ``da`` or ``db`` (its halves, for the conditional protocol).
        max_molecules: use only the first N molecules of the split (tiny/demo runs).
        properties: the properties the model is conditioned on (``--condition``).
        max_atoms: drop molecules with more atoms (``None``: keep all).
    """

    dataset: str = "qm9"
    cache_dir: str | None = None
    split: str = "train"
    max_molecules: int | None = None
    properties: list[str] = field(default_factory=list)
    max_atoms: int | None = None

    def selection(self) -> dict[str, Any]:
        """The keywords of :func:`molgen.data.graphs.select_indices` (``select_indices(data, **cfg.selection())``)."""
        return {"split": self.split, "max_molecules": self.max_molecules, "max_atoms": self.max_atoms}


@dataclass
class BackboneConfig:
    """The shared E(3)-equivariant GNN (see :class:`molgen.nn.backbone.EquivariantBackbone`)."""

    num_layers: int = 6
    scalar_dim: int = 128
    vector_dim: int = 32
    edge_dim: int = 64
    graph_dim: int = 128
    cond_dim: int = 128
    num_rbf: int = 32
    rbf_max: float = 10.0
    radius: float | None = None


@dataclass
class TrainConfig:
    """The one training loop shared by every family (:mod:`molgen.train`)."""

    steps: int = 200_000
    epochs: int | None = None
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-12
    warmup_steps: int = 1000
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    grad_clip: float = 2.0
    ema_decay: float = 0.999
    amp: bool = True
    #: torch.compile each backbone layer (dynamic shapes) before training; a one-time compile of
    #: about a minute, then faster steps (scripts/bench_gpu.py --compile measures it).
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    val_every: int = 5000
    val_batches: int = 20
    val_nll_batches: int = 2  # batches of val_batches that also get log_likelihood (ODE families: costly)
    eval_every: int = 20_000
    eval_samples: int = 256
    eval_sampling_steps: int | None = None
    checkpoint_every: int = 2000
    out_dir: str = "outputs"
    num_workers: int = 0


@dataclass
class RunConfig:
    """Everything needed to rebuild and retrain a model; saved in each checkpoint."""

    model: str
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    family: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# strict dict -> dataclass conversion


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats.

    ``key`` names the value in errors: ``"config key 'train.lr'"`` style (a bare name is quoted as
    a config key).
    """
    what = key if key.startswith(("config key", "sample option")) else f"config key '{key}'"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except MolgenError as exc:
                errors.append(str(exc))
        raise MolgenError(f"{what}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise MolgenError(f"{what}: expected a list, got {value!r}")
        return [coerce(v, item_tp, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise MolgenError(f"{what}: expected true/false, got {value!r}")
    if isinstance(value, str) and tp in (int, float):  # YAML 1.1 reads "1e-4" as a string
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MolgenError(f"{what}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise MolgenError(f"{what}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise MolgenError(f"{what}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise MolgenError(f"{what}: unsupported type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise MolgenError(
            f"unknown config key '{prefix}{unknown[0]}' ({where} accepts: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise MolgenError(f"config key '{prefix}{name}': expected a mapping")
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, tp, prefix + name)
    return cls(**kwargs)


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(items: typing.Iterable[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "backbone.num_layers=4"]`` into a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise MolgenError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise MolgenError(f"--set expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def configs_dir() -> Path:
    """Folder of the YAML configs: ``$MOLGEN_CONFIGS``, else the checkout's top-level ``configs/``
    (source and editable installs), else the copy a wheel installs under ``<prefix>/share/molgen/configs``."""
    env = os.environ.get("MOLGEN_CONFIGS")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent / "configs"
    if checkout.is_dir():
        return checkout
    import sysconfig

    return Path(sysconfig.get_path("data")) / "share" / "molgen" / "configs"


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with one-line errors for missing or malformed files."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MolgenError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MolgenError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MolgenError(f"malformed YAML in {path}{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MolgenError(f"config file {path} must hold a mapping of keys to values")
    return data


def available_presets() -> list[str]:
    folder = configs_dir() / "presets"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _preset_layers(preset: dict[str, Any], model: str, path: Path) -> list[dict[str, Any]]:
    """A preset's shared sections, then its ``families: {<model>: {...}}`` entry as ``family:``.

    Presets serve every family, but family options differ, so a preset's family options are
    given per family under ``families:``; families it does not list keep their own defaults.
    """
    preset = dict(preset)
    per_family = preset.pop("families", None) or {}
    if not isinstance(per_family, dict):
        raise MolgenError(f"{path}: 'families' must map family names to their options")
    if "family" in preset:
        raise MolgenError(f"{path}: a preset gives family options under 'families: {{<model>: ...}}'")
    layers = [preset]
    if per_family.get(model):
        layers.append({"family": per_family[model]})
    return layers


def resolve_config(
    model: str,
    family_cls: type,
    *,
    config_path: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve the layered configuration of a run (see module docstring)."""
    layers: list[dict[str, Any]] = []
    family_yaml = configs_dir() / f"{model}.yaml"
    if family_yaml.is_file():
        layers.append(read_yaml(family_yaml))
    if preset is not None:
        preset_path = configs_dir() / "presets" / f"{preset}.yaml"
        if not preset_path.is_file():
            choices = ", ".join(available_presets()) or "none found"
            raise MolgenError(f"unknown preset '{preset}' (choose from: {choices})")
        layers.extend(_preset_layers(read_yaml(preset_path), model, preset_path))
    if config_path is not None:
        layers.append(read_yaml(config_path))
    if overrides:
        layers.append(overrides)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_update(merged, layer)
    if "model" in merged and merged["model"] != model:
        raise MolgenError(f"config is for model '{merged['model']}' but --model is '{model}'")
    merged["model"] = model
    merged["preset"] = preset
    return build_run_config(merged, family_cls)


def build_run_config(data: dict[str, Any], family_cls: type) -> RunConfig:
    """Strictly convert a plain dict (e.g. from a checkpoint) into a :class:`RunConfig`."""
    data = dict(data)
    family = data.pop("family", None) or {}
    if not isinstance(family, dict):
        raise MolgenError("config key 'family': expected a mapping")
    cfg = from_dict(RunConfig, {k: v for k, v in data.items()})
    cfg.family = from_dict(family_cls, family, "family.")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Semantic checks that types alone cannot express."""
    from molgen.data.properties import get_property

    cfg.data.properties = [get_property(p).name for p in cfg.data.properties]
    if len(set(cfg.data.properties)) != len(cfg.data.properties):
        raise MolgenError("a property is given twice in --condition / data.properties")
    if cfg.data.split not in ("train", "da", "db"):
        raise MolgenError(f"data.split must be train, da or db, got '{cfg.data.split}'")
    from molgen.data.datasets import check_dataset

    check_dataset(cfg.data.dataset)
    if cfg.train.lr_schedule not in ("cosine", "constant"):
        raise MolgenError(f"train.lr_schedule must be cosine or constant, got '{cfg.train.lr_schedule}'")
    for name in ("steps", "batch_size"):
        if getattr(cfg.train, name) <= 0:
            raise MolgenError(f"train.{name} must be positive")
    if cfg.train.epochs is not None and cfg.train.epochs <= 0:
        raise MolgenError("train.epochs must be positive")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise MolgenError("train.ema_decay must be in [0, 1)")
    import math

    if not (math.isfinite(cfg.train.lr) and cfg.train.lr > 0):
        raise MolgenError(f"train.lr must be a positive number, got {cfg.train.lr}")
    for name in ("weight_decay", "grad_clip", "warmup_steps", "min_lr_ratio"):
        value = getattr(cfg.train, name)
        if not (math.isfinite(value) and value >= 0):
            raise MolgenError(f"train.{name} must be a non-negative number, got {value}")
    for name in ("log_every", "val_every", "eval_every", "checkpoint_every", "val_batches"):
        if getattr(cfg.train, name) < 1:
            raise MolgenError(f"train.{name} must be at least 1")
