"""Lossy image codecs for camera arrays: the Zarr v3 array -> bytes codec ``vla.image``.

A chunk of camera frames ``(k, H, W, 3) uint8`` is stored as k independently coded images (JPEG, JPEG XL,
AVIF or WebP, through imagecodecs), so that real-robot video costs what a video codec would, while every
frame stays randomly addressable. Plain zarr reads such an array once this codec is registered: importing
``vla.data`` registers it, and so does the ``zarr.codecs`` entry point that installing vla adds.

Chunk bytes: ``b"VLAI"``, uint32 k, k x uint32 byte lengths, then the k coded frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer

CODEC_NAME = "vla.image"
MAGIC = b"VLAI"
FORMATS = ("jpeg", "jpegxl", "avif", "webp")
# chosen on robosuite renders at 224 px (benchmarks/data_throughput.py): each >= 40 dB PSNR, 20-65x smaller
DEFAULT_QUALITY = {"jpeg": 85, "jpegxl": 90, "avif": 80, "webp": 90}


def coders(fmt: str):
    """(encode, decode) of one image format, with the settings vla stores it at."""
    import imagecodecs

    return {
        # 4:4:4: chroma subsampling (JPEG's 4:2:0 default) cost 11 dB on saturated edges at 64 px, for 25%
        # fewer bytes
        "jpeg": (partial(imagecodecs.jpeg8_encode, subsampling="444"), imagecodecs.jpeg8_decode),
        # speed settings measured at 224 px: JPEG XL effort 3 1.8 ms a frame (default 7: 9.7 ms, +2 dB); AVIF
        # speed 8 3.9 ms (default: 594 ms, +1 dB)
        "jpegxl": (partial(imagecodecs.jpegxl_encode, effort=3), imagecodecs.jpegxl_decode),
        "avif": (partial(imagecodecs.avif_encode, speed=8), imagecodecs.avif_decode),
        "webp": (partial(imagecodecs.webp_encode, lossless=False), imagecodecs.webp_decode),  # else lossless
    }[fmt]


def encode_frames(frames: np.ndarray, fmt: str, quality: int) -> bytes:
    """``(k, H, W, 3) uint8`` -> chunk bytes."""
    encode, _ = coders(fmt)
    coded = [bytes(encode(np.ascontiguousarray(frame), level=quality)) for frame in frames]
    header = MAGIC + struct.pack(f"<I{len(coded)}I", len(coded), *(len(c) for c in coded))
    return header + b"".join(coded)


def frame_spans(data: memoryview, frames: int) -> list[slice]:
    """Where each of a chunk's ``frames`` coded images lies in its bytes; a chunk that does not parse (or
    holds another number of frames) is a ValueError."""
    if len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise ValueError(f"not a {CODEC_NAME} chunk (expected it to start with {MAGIC!r})")
    (k,) = struct.unpack_from("<I", data, 4)
    if k != frames or len(data) < 8 + 4 * k:
        raise ValueError(f"{CODEC_NAME} chunk holds {k} frames, expected {frames}")
    ends = 8 + 4 * k + np.cumsum(struct.unpack_from(f"<{k}I", data, 8))
    if k and ends[-1] > len(data):
        raise ValueError(f"{CODEC_NAME} chunk is truncated: {len(data)} bytes, its header says {ends[-1]}")
    starts = np.concatenate([[8 + 4 * k], ends[:-1]])
    return [slice(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def decode_frames(
    data: bytes | memoryview, fmt: str, shape: tuple[int, ...], which: np.ndarray | None = None
) -> np.ndarray:
    """Chunk bytes -> its ``(k, H, W, 3)`` frames (``shape``), or only the frames ``which`` (indices within
    the chunk): each frame decodes alone."""
    data = memoryview(data)
    spans = frame_spans(data, shape[0])
    which = np.arange(shape[0]) if which is None else which
    _, decode = coders(fmt)
    out = np.empty((len(which), *shape[1:]), np.uint8)
    for row, i in enumerate(which):
        frame = np.asarray(decode(data[spans[i]]))
        if frame.shape != tuple(shape[1:]):
            raise ValueError(f"{CODEC_NAME} frame {i} decodes to {frame.shape}, expected {tuple(shape[1:])}")
        out[row] = frame
    return out


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """Per-frame lossy image coding of uint8 ``(k, H, W, 3)`` chunks; ``quality`` 0-100 (the codec's own)."""

    is_fixed_size = False

    codec: str
    quality: int

    def __init__(self, *, codec: str = "jpeg", quality: int | None = None) -> None:
        if codec not in FORMATS:
            raise ValueError(f"image codec {codec!r} is not one of {list(FORMATS)}")
        quality = DEFAULT_QUALITY[codec] if quality is None else int(quality)
        if not 1 <= quality <= 100:
            raise ValueError(f"image codec quality must be in 1..100, got {quality}")
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "quality", quality)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageCodec:
        if data.get("name") != CODEC_NAME:
            raise ValueError(f"expected codec {CODEC_NAME!r}, got {data.get('name')!r}")
        return cls(**(data.get("configuration") or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": {"codec": self.codec, "quality": self.quality}}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if (
            len(shape) != 4
            or shape[-1] != 3
            or str(getattr(dtype, "to_native_dtype", lambda: dtype)()) != "uint8"
        ):
            raise ValueError(f"{CODEC_NAME} stores uint8 (N, H, W, 3) frames, got {shape} {dtype}")

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        frames = decode_frames(chunk_bytes.as_numpy_array().tobytes(), self.codec, tuple(chunk_spec.shape))
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(frames)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = encode_frames(np.asarray(chunk_array.as_numpy_array(), np.uint8), self.codec, self.quality)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # a variable-size codec: zarr's convention, as its own BloscCodec


def register() -> None:
    from zarr.registry import register_codec

    register_codec(CODEC_NAME, ImageCodec)


def image_codecs_per_camera(spec: Any, cameras: list[str]) -> dict[str, ImageCodec | None]:
    """One spec for every camera (``"jpeg:90"``) or ``{camera: spec}`` (cameras left out: none)."""
    if isinstance(spec, dict) or hasattr(spec, "keys"):
        unknown = set(spec) - set(cameras)
        if unknown:
            raise ValueError(f"image_codec names cameras {sorted(unknown)} that are not in {cameras}")
        return {cam: parse_image_codec(spec.get(cam)) for cam in cameras}
    codec = parse_image_codec(spec)
    return {cam: codec for cam in cameras}


def describe_storage(array: Any) -> str:
    """How a camera array stores its frames: ``jpeg q90`` or ``raw (blosc zstd)``."""
    from zarr.codecs import BloscCodec

    codecs = array.metadata.codecs
    for codec in codecs:
        if isinstance(codec, ImageCodec):
            return f"{codec.codec} q{codec.quality}"
    blosc = [codec for codec in codecs if isinstance(codec, BloscCodec)]
    return f"raw (blosc {blosc[0].cname.value})" if blosc else "raw"


def parse_image_codec(spec: str | None) -> ImageCodec | None:
    """``none`` / None -> None (blosc-compressed raw frames); ``jpeg``, ``avif:75``, ``jpegxl:95`` -> a
    codec."""
    if spec is None or str(spec).lower() in ("", "none", "raw"):
        return None
    fmt, _, quality = str(spec).partition(":")
    try:
        return ImageCodec(codec=fmt.strip().lower(), quality=int(quality) if quality else None)
    except ValueError as e:
        raise ValueError(
            f"image_codec={spec!r}: {e}; expected none, or FORMAT[:QUALITY] with FORMAT in {list(FORMATS)}"
        ) from None
