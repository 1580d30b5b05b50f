"""Hydra composition for the `vla` verbs: ``configs/<verb>.yaml`` + overrides, checked against a dataclass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def config_dir() -> Path:
    """``$VLA_CONFIG_DIR``; else the configs an installed wheel carries (``vla/_configs``, see setup.py); else
    the checkout's ``configs/`` (an editable install)."""
    env = os.environ.get("VLA_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    package = Path(__file__).resolve().parent
    shipped = package / "_configs"
    return shipped if shipped.is_dir() else package.parent / "configs"


# Typed schemas a config's defaults list names (e.g. `train.yaml`: `- train_schema`), so that every key exists
# before presets and overrides merge: a preset need only state what differs from the dataclass defaults, and
# `policy.backbone.finetune=frozen` still overrides a key the preset leaves out.
SCHEMAS = {"train_schema": ("vla.train.config", "TrainConfig")}


def _register_schemas() -> None:
    import importlib

    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, (module, cls) in SCHEMAS.items():
        store.store(name=name, node=getattr(importlib.import_module(module), cls))


class ConfigError(ValueError):
    """A config or override that cannot be composed or does not match its schema."""


def compose(config_name: str, overrides: list[str] | None = None, schema: type | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with hydra ``overrides``; validate against ``schema`` if
    given."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = config_dir()
    if not (directory / f"{config_name}.yaml").is_file():
        raise ConfigError(f"no config {config_name!r} in {directory}")
    _register_schemas()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
        if schema is not None:
            cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except (HydraException, OmegaConfBaseException) as e:
        causes = [e]
        while causes[-1].__cause__ is not None:  # hydra wraps the typed check that says what was wrong
            causes.append(causes[-1].__cause__)
        detail = "; ".join(dict.fromkeys(str(c).strip() for c in causes))
        raise ConfigError(
            f"bad config for `{config_name}` (overrides {list(overrides or [])}): {detail}"
        ) from e
    return cfg


def to_object(cfg: DictConfig, schema: type) -> Any:
    """The typed dataclass instance for a composed config."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except Exception as e:  # dataclass __post_init__ checks raise plain ValueErrors
        raise ConfigError(f"invalid {schema.__name__}: {e}") from e
