"""Registry of environments: names -> factories, imported lazily so a missing simulator only
matters for the envs that need it."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class EnvSpec:
    name: str  # "<suite>/<task>"
    factory: str  # "module:function"; called with the task's kwargs + user options
    description: str
    kwargs: tuple[tuple[str, object], ...] = ()
    requires: str | None = None  # extra that provides the simulator ("sim")

    @property
    def suite(self) -> str:
        return self.name.split("/", 1)[0]

    def load(self) -> Callable[..., gym.Env]:
        module, fn = self.factory.split(":")
        try:
            return getattr(importlib.import_module(module), fn)
        except ImportError as e:
            hint = (
                f" (install the `{self.requires}` extra: pip install -e '.[{self.requires}]')"
                if self.requires
                else ""
            )
            raise ImportError(
                f"environment {self.name!r} needs a package that is not installed: {e}{hint}"
            ) from e


_REGISTRY: dict[str, EnvSpec] = {}


def register(spec: EnvSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"environment {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def spec(name: str) -> EnvSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown environment {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def names(suite: str | None = None) -> list[str]:
    return sorted(n for n, s in _REGISTRY.items() if suite is None or s.suite == suite)


def make(name: str, **options) -> gym.Env:
    """Create a registered env; ``options`` (cameras, image_size, seed, max_steps, control_freq, ...)
    go to its factory, and an option it does not take is an error naming those it does."""
    s = spec(name)
    factory = s.load()
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = set(options) - set(accepted)
        if unknown:
            takes = sorted(k for k in accepted if k not in dict(s.kwargs))
            raise TypeError(f"{name} does not take option(s) {sorted(unknown)}; it takes {takes}")
    options = {k: v for k, v in options.items() if v is not None}
    return factory(**dict(s.kwargs), name=name, **options)
