"""Packaging beyond what pyproject.toml can say: the hydra configs live at the repository root
(``configs/``, where a checkout edits them) and ship inside the wheel as the package ``vla._configs``,
so an installed ``vla`` finds them without a checkout (``vla.config.config_dir``)."""

from pathlib import Path

from setuptools import find_packages, setup

CONFIG_GROUPS = sorted(p.name for p in Path("configs").iterdir() if p.is_dir())

CONFIG_PACKAGES = ["vla._configs", *(f"vla._configs.{group}" for group in CONFIG_GROUPS)]

setup(
    packages=[*find_packages(include=["vla", "vla.*", "envs", "envs.*"]), *CONFIG_PACKAGES],
    package_dir={"vla._configs": "configs"},
    package_data={name: ["*.yaml"] for name in CONFIG_PACKAGES},
)
