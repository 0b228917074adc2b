"""Sampler options, one way for every family: a typed dataclass per family, parsed in one place.

A ``sample`` call takes the protocol's keywords (``cond, n_atoms, seed, batch_size, progress``) and
the family's sampler options: the fields of its :attr:`~molgen.models.base.Generator.options_cls`,
a frozen dataclass derived from :class:`SampleOptions` (``steps``, ``guidance``, ``composition``
for every family, plus the family's own, e.g. ``score``'s ``sampler``). An option left out or
given as ``None`` takes the family config's value of the same name (``steps``: ``sampling_steps``).
:func:`resolve_options` rejects unknown names and values of the wrong type with one line, then the
dataclass's ``validate`` checks ranges. ``--sample-opt KEY=VALUE`` strings become keywords through
:func:`parse_sample_options` (values parsed as YAML, so ``0.8`` is a number and ``true`` a bool).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from molgen.config import coerce
from molgen.errors import MolgenError
from molgen.sampling.guidance import check_composition

#: keywords of every ``sample`` call that are not sampler options
PROTOCOL_KEYWORDS = ("cond", "n_atoms", "seed", "batch_size", "progress")

O = TypeVar("O", bound="SampleOptions")


@dataclass(frozen=True)
class SampleOptions:
    """Options every family's ``sample`` takes.

    Args:
        steps: solver / sampler steps (``None``: the family's ``sampling_steps``; families that
            decode in one pass or token by token ignore it).
        guidance: classifier-free guidance weight ``w`` (0: none).
        composition: ``joint`` or ``product`` (:mod:`molgen.sampling.guidance`).
    """

    steps: int | None = None
    guidance: float = 0.0
    composition: str = "joint"

    @classmethod
    def config_defaults(cls, family_config: Any) -> dict[str, Any]:
        """Defaults from the family config: fields of the same name, ``steps`` from ``sampling_steps``."""
        out = {f.name: getattr(family_config, f.name) for f in dataclasses.fields(cls)
               if hasattr(family_config, f.name)}
        if "steps" not in out and hasattr(family_config, "sampling_steps"):
            out["steps"] = family_config.sampling_steps
        return out

    @property
    def guide(self) -> dict[str, Any]:
        """``guidance`` and ``composition`` as keywords of a guided evaluation."""
        return {"guidance": self.guidance, "composition": self.composition}

    def validate(self) -> None:
        """Range checks (one-line :class:`MolgenError`); subclasses extend it."""
        if self.steps is not None and self.steps < 1:
            raise MolgenError("--steps must be at least 1")
        if not math.isfinite(self.guidance):
            raise MolgenError(f"--guidance must be a finite number, got {self.guidance}")
        check_composition(self.composition)


@dataclass(frozen=True)
class TokenDrawOptions(SampleOptions):
    """Options of families that draw tokens from a categorical (``smiles-ar``, the ``vae``'s smiles decoder).

    Args:
        temperature: divides the logits (> 0; ``top_k=1`` is greedy decoding).
        top_k: keep the k most likely tokens (``None``: all).
    """

    temperature: float = 1.0
    top_k: int | None = None

    def validate(self) -> None:
        super().validate()
        if not self.temperature > 0:
            raise MolgenError("temperature must be positive (use top_k=1 for greedy decoding)")
        if self.top_k is not None and self.top_k < 1:
            raise MolgenError(f"top_k must be at least 1, got {self.top_k}")


def option_names(cls: type[SampleOptions]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def resolve_options(cls: type[O], family_config: Any, family: str, overrides: dict[str, Any]) -> O:
    """The options of one ``sample`` call: config defaults, then ``overrides`` (``None``: default).

    Raises:
        MolgenError: an option the family does not take, a value of the wrong type or out of range.
    """
    names = option_names(cls)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        takes = ", ".join([*PROTOCOL_KEYWORDS, *names])
        raise MolgenError(f"family '{family}' does not take sampler option(s) {', '.join(unknown)} "
                          f"(it takes: {takes})")
    hints = typing.get_type_hints(cls)
    values = cls.config_defaults(family_config)
    for key, value in overrides.items():
        if value is not None:
            values[key] = coerce(value, hints[key], f"sample option '{key}'")
    opts = cls(**values)
    opts.validate()
    return opts


def parse_sample_options(items: list[str]) -> dict[str, Any]:
    """``["temperature=0.8", "sampler=ode"]`` -> keyword options for the family's ``sample``."""
    import yaml

    opts: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise MolgenError(f"malformed --sample-opt '{item}': expected KEY=VALUE, e.g. temperature=0.8")
        try:
            opts[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            opts[key.strip()] = raw
    return opts
