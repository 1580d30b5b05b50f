"""Typed config of the data section (``configs/data/default.yaml`` mirrors it)."""

from __future__ import annotations

from dataclasses import dataclass

from .window import WindowConfig


@dataclass
class DataConfig(WindowConfig):
    path: str | None = None  # dataset URL: local path, file://, memory://, s3://
    val_fraction: float = 0.1
    split_seed: int = 0
    num_workers: int = 2
