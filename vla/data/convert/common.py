"""What every converter shares: staged output (a partial conversion never looks complete),
the final validation + stats pass, and a summary."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..schema import SchemaError
from ..stats import ensure_stats
from ..store import TrajectoryStore, dataset_exists, is_local, normalize_url
from ..validate import validate


class ConversionError(ValueError):
    """The source does not look like the format it was read as; names the missing key or mismatch."""


@contextmanager
def staged_dataset(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling path to write into; on success it is validated, given stats and
    renamed to ``dst``. On any error the temporary dataset is removed and ``dst`` is untouched."""
    dst = normalize_url(dst)
    if not is_local(dst):
        raise ConversionError(f"converters write local datasets; got {dst!r} (convert locally, then upload)")
    if dataset_exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    tmp = str(Path(dst).with_name(f".{Path(dst).name}.converting-{uuid.uuid4().hex[:8]}"))
    try:
        yield tmp
        report = validate(tmp)
        if not report.ok:
            problems = "; ".join(f"{f.where}: {f.message}" for f in report.errors[:5])
            raise SchemaError(f"converted dataset failed validation: {problems}")
        ensure_stats(tmp)
        if Path(dst).exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    finally:
        if Path(tmp).exists():
            shutil.rmtree(tmp, ignore_errors=True)


def summarize(dst: str, source: str, fmt: str, started: float) -> dict[str, Any]:
    store = TrajectoryStore(dst)
    return {
        "source": source,
        "from": fmt,
        "dataset": dst,
        "episodes": store.num_episodes,
        "frames": store.num_frames,
        "cameras": store.meta.cameras,
        "fps": store.meta.fps,
        "validated": True,
        "seconds": round(time.perf_counter() - started, 2),
    }
