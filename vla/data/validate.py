"""`vla data validate`: check a dataset against the schema; every finding names the array and index."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr

from . import schema
from .codecs import describe_storage
from .schema import SchemaError
from .store import dataset_exists, is_local, meta_from_group, normalize_url, open_group, read_commit_state


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    where: str  # array path or attribute
    message: str
    index: int | None = None


@dataclass
class ValidationReport:
    url: str
    findings: list[Finding] = field(default_factory=list)
    episodes: int = 0
    frames: int = 0
    image_storage: dict[str, str] = field(default_factory=dict)  # camera -> "jpeg q90" | "raw (blosc zstd)"

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, where: str, message: str, index: int | None = None) -> None:
        self.findings.append(Finding("error", where, message, index))

    def warn(self, where: str, message: str, index: int | None = None) -> None:
        self.findings.append(Finding("warning", where, message, index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "episodes": self.episodes,
            "frames": self.frames,
            "image_storage": self.image_storage,
            "findings": [asdict(f) for f in self.findings],
        }


EXPECTED_DTYPES = {
    schema.STATE: "float32",
    schema.ACTION: "float32",
    schema.EPISODE_ENDS: "int64",
    schema.SUCCESS: "bool",
}


def _locate(frame: int, ends: np.ndarray) -> str:
    ep = int(np.searchsorted(ends, frame, side="right"))
    start = int(ends[ep - 1]) if ep > 0 else 0
    return f"episode {ep}, frame {frame - start}"


def _check_chunks(
    url: str,
    arr: zarr.Array,
    path: str,
    rows: int,
    report: ValidationReport,
    strict: bool,
    decode: bool,
    ends: np.ndarray | None,
    on_rows: Callable[[int, np.ndarray], None] | None = None,
) -> None:
    """Each chunk of ``arr`` that holds one of its first ``rows`` rows: its file exists (local stores) and it
    decodes, read one chunk at a time so a failure names the chunk and its file. ``on_rows(first, rows)``
    receives each decoded chunk's committed rows when a chunk spans whole rows (the images' blank-frame scan
    then reads nothing twice)."""
    stored = arr.shards or arr.chunks  # the unit of one file: the shard, where an array is sharded
    chunk_rows = stored[0]
    grid = [range(-(-size // chunk)) for size, chunk in zip(arr.shape[1:], stored[1:], strict=True)]
    for i in range(-(-rows // chunk_rows)):
        first = i * chunk_rows
        where = f"rows {first}-{min(first + chunk_rows, rows) - 1}" + (
            f" ({_locate(first, ends)})" if ends is not None and len(ends) else ""
        )
        for rest in itertools.product(*grid):
            index = (i, *rest)
            file = os.path.join(url, path, arr.metadata.encode_chunk_key(index))
            if is_local(url) and not os.path.exists(file):
                message = f"chunk {index} is missing ({file}): {where} read back as the fill value"
                if strict:
                    report.error(path, message, first)
                else:  # an older writer skipped chunks that were all fill value: maybe not damage
                    report.warn(
                        path, message + " (or were all fill value, which older writers did not store)", first
                    )
                continue
            if decode:
                block = tuple(slice(k * c, (k + 1) * c) for k, c in zip(index, stored, strict=True))
                try:
                    data = arr[block]
                except Exception as e:  # noqa: BLE001 - zarr and its codecs raise many kinds
                    report.error(
                        path,
                        f"chunk {index} ({file}) cannot be read: {type(e).__name__}: {str(e)[:200]}",
                        first,
                    )
                    continue
                if on_rows is not None and all(len(r) == 1 for r in grid):
                    on_rows(first, np.asarray(data)[: rows - first])


def validate(
    url: str | os.PathLike,
    check_images: bool = True,
    chunk_frames: int = 2048,
    decode_images: bool | None = None,
) -> ValidationReport:
    """Schema, episode_ends monotonicity, array lengths, dtypes, every chunk stored and readable, NaN/inf,
    action bounds, blank images, stats. ``check_images``: the blank-frame scan, and by default
    (``decode_images``) decoding every image chunk; without it image chunks are only checked to exist."""
    url = normalize_url(url)
    report = ValidationReport(url)
    if not dataset_exists(url):
        report.error("/", "no Zarr dataset here (expected zarr.json)")
        return report
    try:
        group = open_group(url, mode="r")
        group.attrs.asdict()  # a broken zarr.json fails here
    except Exception as e:  # noqa: BLE001 - a broken zarr.json: JSONDecodeError, zarr's own errors...
        report.error(
            "/", f"{os.path.join(url, 'zarr.json')} cannot be read: {type(e).__name__}: {str(e)[:200]}"
        )
        return report
    try:
        meta = meta_from_group(group, url, check=False)  # contradictions are reported per array below
    except (SchemaError, TypeError, ValueError, KeyError) as e:
        report.error("attrs", str(e)[:500])
        return report

    frame_paths = {f"{schema.IMAGES}/{c}": meta.image_shape(c) for c in meta.cameras}
    frame_paths |= {schema.STATE: (meta.state_dim,), schema.ACTION: (meta.action_dim,)}
    required = [*frame_paths, schema.EPISODE_ENDS, *schema.EPISODE_ARRAYS]
    for p in required:
        try:
            group[p]
        except KeyError:
            report.error(p, "required array is missing")
        except Exception as e:  # noqa: BLE001 - its zarr.json is unreadable
            file = os.path.join(url, p, "zarr.json")
            report.error(p, f"array metadata {file} cannot be read: {type(e).__name__}: {str(e)[:200]}")
    if report.errors:
        return report

    # dtypes and trailing shapes
    for path in required:
        arr = group[path]
        if path.startswith(schema.IMAGES):
            report.image_storage[path.rsplit("/", 1)[1]] = describe_storage(arr)
        want = "uint8" if path.startswith(schema.IMAGES) else EXPECTED_DTYPES.get(path)
        got = str(arr.dtype)
        if want is not None and got != want:
            report.error(path, f"dtype is {got}, expected {want}")
        elif (
            path in (schema.INSTRUCTION, schema.TASK)
            and arr.dtype.kind not in "OUT"
            and "str" not in got.lower()
        ):
            report.error(path, f"dtype is {got}, expected a string dtype")
        if path in frame_paths and tuple(arr.shape[1:]) != frame_paths[path]:
            report.error(
                path, f"shape is {tuple(arr.shape)}, expected (N, {', '.join(map(str, frame_paths[path]))})"
            )
    if report.errors:
        return report

    # episode_ends: readable, then the commit point, monotone, and what an interrupted write can explain
    episode_ends = group[schema.EPISODE_ENDS]
    _check_chunks(url, episode_ends, schema.EPISODE_ENDS, episode_ends.shape[0], report, True, True, None)
    if report.errors:
        return report
    for problem in read_commit_state(group, meta).inconsistencies:
        report.error(schema.EPISODE_ENDS, problem)
    if report.errors:
        return report
    raw_ends = np.asarray(group[schema.EPISODE_ENDS][:], dtype=np.int64)
    ends = raw_ends
    while len(ends) and ends[-1] == schema.UNCOMMITTED:
        ends = ends[:-1]
    if len(ends) < len(raw_ends):
        report.warn(
            schema.EPISODE_ENDS,
            f"{len(raw_ends) - len(ends)} trailing uncommitted entr(ies) from an interrupted write (ignored)",
            len(ends),
        )
    if len(ends) and ends[0] <= 0:
        report.error(schema.EPISODE_ENDS, f"first episode end is {ends[0]}, expected > 0 (empty episode)", 0)
    steps = np.diff(ends)
    if (steps <= 0).any():
        i = int(np.argmax(steps <= 0)) + 1
        report.error(
            schema.EPISODE_ENDS,
            f"not strictly increasing: episode_ends[{i - 1}]={ends[i - 1]} >= episode_ends[{i}]={ends[i]}",
            i,
        )
        return report
    n_frames = int(ends[-1]) if len(ends) else 0
    report.episodes, report.frames = len(ends), n_frames

    for path in frame_paths:
        rows = group[path].shape[0]
        if rows < n_frames:
            report.error(
                path,
                f"has {rows} rows but episode_ends[-1] = {n_frames}: frames of committed episodes are "
                "missing",
                rows,
            )
        elif rows > n_frames:
            report.warn(
                path,
                f"{rows - n_frames} rows past the last committed episode (partial tail, ignored)",
                n_frames,
            )
    for path in (*schema.EPISODE_ARRAYS, *(p for p in schema.OPTIONAL_EPISODE_ARRAYS if p in group)):
        rows = group[path].shape[0]
        if rows < len(ends):
            report.error(path, f"has {rows} rows but there are {len(ends)} episodes", rows)
        elif rows > len(ends):
            report.warn(
                path,
                f"{rows - len(ends)} rows past the last committed episode (partial tail, ignored)",
                len(ends),
            )
    if report.errors:
        return report

    # every chunk that holds committed rows is stored and decodes (a lost chunk file reads back as the fill
    # value: zeros, silently)
    strict = bool(group.attrs.get(schema.ALL_CHUNKS_WRITTEN, False))
    blank: dict[str, list[int]] = {}  # image array -> its blank (single-colour) frames, found while decoding

    def find_blank(path: str) -> Callable[[int, np.ndarray], None]:
        def scan(first: int, frames: np.ndarray) -> None:
            flat = frames.reshape(len(frames), -1)
            blank[path] += (first + np.flatnonzero(flat.min(axis=1) == flat.max(axis=1))).tolist()

        blank[path] = []
        return scan

    for path in [*frame_paths, *(p for p in [schema.TARGETS, schema.SOURCE, schema.TIMESTAMP] if p in group)]:
        image = path.startswith(schema.IMAGES)
        decode = (check_images if decode_images is None else decode_images) or not image
        scan = find_blank(path) if image and check_images else None
        _check_chunks(
            url, group[path], path, n_frames, report, strict, decode or scan is not None, ends, scan
        )
    for path in schema.EPISODE_ARRAYS:
        _check_chunks(url, group[path], path, len(ends), report, strict, True, None)
    if report.errors:
        return report

    # values
    low = np.asarray(meta.action_space.low, dtype=np.float32)
    high = np.asarray(meta.action_space.high, dtype=np.float32)
    out_of_bounds, first_oob = 0, None
    for path in (schema.STATE, schema.ACTION):
        arr = group[path]
        for lo in range(0, n_frames, chunk_frames):
            x = np.asarray(arr[lo : min(lo + chunk_frames, n_frames)])
            bad = ~np.isfinite(x)
            if bad.any():
                t, d = np.argwhere(bad)[0]
                frame = lo + int(t)
                report.error(
                    path,
                    f"non-finite value {x[t, d]} at row {frame} ({_locate(frame, ends)}), dim {d}",
                    frame,
                )
                break
            if path == schema.ACTION:
                oob = ((x < low - 1e-6) | (x > high + 1e-6)).any(axis=1)
                if oob.any() and first_oob is None:
                    first_oob = lo + int(np.argmax(oob))
                out_of_bounds += int(oob.sum())
    if out_of_bounds:
        report.warn(
            schema.ACTION,
            f"{out_of_bounds} action rows outside action_space bounds; first at row {first_oob} "
            f"({_locate(first_oob, ends)})",
            first_oob,
        )

    for path, frames in blank.items():
        if frames:
            report.warn(
                path,
                f"{len(frames)} blank (single-colour) frames, e.g. a failed render; first at row "
                f"{frames[0]} ({_locate(frames[0], ends)})",
                frames[0],
            )

    instructions = np.asarray(group[schema.INSTRUCTION][: len(ends)], dtype=object)
    empty = [i for i, s in enumerate(instructions) if not str(s).strip()]
    if empty:
        report.warn(
            schema.INSTRUCTION,
            f"{len(empty)} episodes have an empty instruction, first episode {empty[0]}",
            empty[0],
        )

    if schema.STATS in group:
        sgroup = group[schema.STATS]
        covered = sgroup.attrs.get("num_frames")
        if covered is None:
            report.warn(
                schema.STATS,
                "stats group without num_frames (interrupted stats write); recompute with `vla data stats "
                "--recompute`",
            )
        elif covered != n_frames:
            report.warn(
                schema.STATS,
                f"stats cover {covered} frames, dataset has {n_frames}; recompute with `vla data stats "
                "--recompute`",
            )
        for key in sgroup.attrs.get("keys", []):
            for name in schema.STAT_NAMES:
                path = f"{schema.STATS}/{key}/{name}"
                if f"{key}/{name}" not in sgroup:
                    report.error(path, "missing stats array")
                elif not np.isfinite(np.asarray(sgroup[f"{key}/{name}"][:])).all():
                    report.error(path, "non-finite stats value")
    return report
