"""Dataset converters: robomimic HDF5, LeRobot v3.0 and Diffusion Policy Zarr into vla Zarr,
and vla Zarr out to LeRobot v3.0.

    convert(src, dst)                       # format detected from src
    convert(src, dst, to_format="lerobot")  # vla Zarr -> LeRobot v3.0
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .common import ConversionError
from .diffusion_policy import from_diffusion_policy
from .lerobot import from_lerobot, to_lerobot
from .robomimic import from_robomimic

FORMATS = ("robomimic", "lerobot", "diffusion_policy", "vla")


def detect_format(src: str | os.PathLike) -> str:
    path = Path(src)
    if path.is_file() and path.suffix in (".hdf5", ".h5"):
        return "robomimic"
    if (path / "meta" / "info.json").is_file():
        return "lerobot"
    if (path / "zarr.json").is_file() and json.loads((path / "zarr.json").read_text()).get(
        "attributes", {}
    ).get("format") == "vla.trajectories":
        return "vla"
    if (path / ".zgroup").is_file() or path.suffix == ".zip":
        return "diffusion_policy"
    raise ConversionError(f"cannot tell the format of {src}; pass --from ({', '.join(FORMATS[:3])})")


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    from_format: str | None = None,
    to_format: str = "vla",
    **options: Any,
) -> dict[str, Any]:
    """Convert ``src`` to ``dst``; returns a summary (counts, validation). Options go to the converter."""
    from_format = from_format or detect_format(src)
    if to_format == "lerobot":
        if from_format != "vla":
            raise ConversionError(f"--to lerobot reads a vla dataset, got a {from_format} source")
        return to_lerobot(src, dst, **options)
    if to_format != "vla":
        raise ConversionError(f"unknown target format {to_format!r}; expected 'vla' or 'lerobot'")
    readers = {
        "robomimic": from_robomimic,
        "lerobot": from_lerobot,
        "diffusion_policy": from_diffusion_policy,
    }
    if from_format not in readers:
        raise ConversionError(f"unknown source format {from_format!r}; expected one of {sorted(readers)}")
    return readers[from_format](src, dst, **options)


__all__ = [
    "ConversionError",
    "FORMATS",
    "convert",
    "detect_format",
    "from_diffusion_policy",
    "from_lerobot",
    "from_robomimic",
    "to_lerobot",
]
