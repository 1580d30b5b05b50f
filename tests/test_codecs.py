"""Lossy image codecs for camera arrays (vla.data.codecs): real imagecodecs coders inside real Zarr chunks."""

import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import make_meta, write_dataset

from vla.cli import main
from vla.data import TrajectoryStore, TrajectoryWriter, validate
from vla.data.codecs import ImageCodec, decode_frames, encode_frames, parse_image_codec
from vla.data.convert import convert
from vla.data.window import WindowConfig, WindowDataset


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def smooth_frames(length, h, w, seed):
    """Camera-like frames: smooth shading and a moving object with sharp edges."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((length, h, w, 3), np.uint8)
    for t in range(length):
        frames[t, ..., 0] = xx * 200 // w + 5 * (seed % 10)
        frames[t, ..., 1] = yy * 255 // h
        frames[t, ..., 2] = 128 + 40 * np.sin(xx / 5 + t)
        frames[t, 8 + t % 8 : 24 + t % 8, 10:26] = (200, 60, 40)
    return frames


def smooth_dataset(url, image_codec, lengths=(20, 13)):
    meta = make_meta(image_size={"front": (48, 64), "wrist": (32, 32)})
    with TrajectoryWriter(url, meta, image_codec=image_codec, image_chunk_frames=8) as w:
        for e, n in enumerate(lengths):
            w.add_episode(
                images={"front": smooth_frames(n, 48, 64, e), "wrist": smooth_frames(n, 32, 32, e + 5)},
                state=np.zeros((n, 3), np.float32),
                action=np.zeros((n, 2), np.float32),
                instruction=f"task {e}",
            )
    return meta


@pytest.mark.parametrize("codec", ["jpeg", "jpegxl", "avif", "webp"])
def test_each_codec_stores_frames_smaller_and_close(tmp_path, codec):
    raw, coded = tmp_path / "raw.zarr", tmp_path / f"{codec}.zarr"
    smooth_dataset(raw, None)
    smooth_dataset(coded, codec)
    a, b = TrajectoryStore(raw), TrajectoryStore(coded)
    for cam in ("front", "wrist"):
        ours, theirs = a.load(f"images/{cam}"), b.load(f"images/{cam}")
        # tiny synthetic frames with saturated edges are a hard case (WebP is 4:2:0 only); on camera frames
        # each default quality gives >= 40 dB (benchmarks/data_throughput.py)
        assert theirs.shape == ours.shape and psnr(theirs, ours) > 27, (cam, psnr(theirs, ours))
        assert not np.array_equal(theirs, ours)  # lossy for real: the codec ran
    assert b.nbytes_stored() < a.nbytes_stored() / 2
    # random access decodes one frame, the same frame a whole read gives
    np.testing.assert_array_equal(b.images("front")[17], b.load("images/front")[17])
    assert b.summary()["image_storage"]["front"].startswith(f"{codec} q")
    assert a.summary()["image_storage"]["front"] == "raw (blosc zstd)"
    report = validate(coded)
    assert report.ok and report.image_storage["wrist"].startswith(codec)
    assert b.group.attrs["version"] == 2 and a.group.attrs["version"] == 2  # mixed sizes: both version 2


def test_a_dataset_appends_keeps_its_codec_and_plain_zarr_reads_it(tmp_path):
    url = tmp_path / "jpeg.zarr"
    smooth_dataset(url, {"front": "jpeg:95"})  # the wrist camera stays raw
    with TrajectoryWriter(url) as w:  # reopen: the arrays carry their codec
        w.add_episode(
            images={"front": smooth_frames(5, 48, 64, 9), "wrist": smooth_frames(5, 32, 32, 9)},
            state=np.zeros((5, 3), np.float32),
            action=np.zeros((5, 2), np.float32),
            instruction="more",
        )
    store = TrajectoryStore(url)
    assert (
        store.num_frames == 38 and psnr(store.episode(2)["images"]["front"], smooth_frames(5, 48, 64, 9)) > 35
    )
    np.testing.assert_array_equal(store.episode(2)["images"]["wrist"], smooth_frames(5, 32, 32, 9))
    # a fresh interpreter that never imports vla: zarr finds the codec through the entry point
    code = (
        "import sys, zarr; a = zarr.open_array(sys.argv[1], mode='r'); "
        "print(a[33:38].shape, a.metadata.codecs[0].to_dict()['name'], 'vla' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(url / "data" / "images" / "front")], capture_output=True, text=True
    )
    assert out.stdout.split() == ["(5,", "48,", "64,", "3)", "vla.image", "True"], out.stderr[-2000:]
    # the windows the trainer reads decode through it
    sample = WindowDataset(store, WindowConfig(horizon=4, n_obs_steps=2, in_memory=False))[30]
    assert sample["images"]["front"].shape == (2, 48, 64, 3) and sample["images"]["wrist"].shape == (
        2,
        32,
        32,
        3,
    )


def test_a_damaged_coded_chunk_is_named_and_the_rest_still_reads(tmp_path):
    url = tmp_path / "jpeg.zarr"
    smooth_dataset(url, "jpeg")
    chunk = url / "data" / "images" / "front" / "c" / "1" / "0" / "0" / "0"  # frames 8-15
    chunk.write_bytes(b"garbage, not a chunk" * 10)
    report = validate(url)
    assert not report.ok and any("chunk (1, 0, 0, 0)" in f.message for f in report.errors), report.errors
    assert TrajectoryStore(url).images("front")[20].shape == (48, 64, 3)  # other chunks still read
    disk = WindowDataset(TrajectoryStore(url), WindowConfig(horizon=2, n_obs_steps=1, in_memory=False))
    with pytest.raises(ValueError, match=r"front/c/1/0/0/0: not a vla.image chunk"):
        disk[9]  # the training reader names the file too
    assert disk[20]["images"]["front"].shape == (1, 48, 64, 3)
    with pytest.raises(ValueError, match="not a vla.image chunk"):
        decode_frames(b"JUNK" * 4, "jpeg", (1, 4, 4, 3))
    with pytest.raises(ValueError, match="holds 2 frames, expected 3"):
        decode_frames(encode_frames(np.zeros((2, 8, 8, 3), np.uint8), "jpeg", 90), "jpeg", (3, 8, 8, 3))


def test_codec_specs_and_their_errors(tmp_path):
    assert parse_image_codec("none") is None and parse_image_codec(None) is None
    assert parse_image_codec("avif:70") == ImageCodec(codec="avif", quality=70)
    assert parse_image_codec("JPEG").quality == 85
    with pytest.raises(ValueError, match=r"image_codec='png': .* expected none, or FORMAT\[:QUALITY\]"):
        parse_image_codec("png")
    with pytest.raises(ValueError, match="quality must be in 1..100"):
        parse_image_codec("jpeg:0")
    with pytest.raises(ValueError, match=r"names cameras \['side'\] that are not in"):
        write_dataset(tmp_path / "x.zarr", meta=make_meta(), image_codec={"side": "jpeg"})
    with pytest.raises(ValueError, match="stores uint8 \\(N, H, W, 3\\) frames"):
        zarr.create_array(
            store=str(tmp_path / "bad"),
            shape=(4, 8),
            dtype="float32",
            serializer=ImageCodec(),
            compressors=None,
        )


def test_collect_and_convert_choose_the_codec(tmp_path, capsys):
    assert (
        main(
            [
                "collect",
                "episodes=2",
                "image_size=32",
                "image_codec=jpeg:92",
                f"out={tmp_path / 'c.zarr'}",
                "videos=0",
            ]
        )
        == 0
    )
    assert TrajectoryStore(tmp_path / "c.zarr").summary()["image_storage"] == {"top": "jpeg q92"}
    assert main(["data", "info", str(tmp_path / "c.zarr")]) == 0 and "jpeg q92" in capsys.readouterr().out
    smooth_dataset(tmp_path / "raw.zarr", None)
    convert(tmp_path / "raw.zarr", tmp_path / "lr", to_format="lerobot", video_codec=None, progress=False)
    args = [
        "data",
        "convert",
        str(tmp_path / "lr"),
        str(tmp_path / "in.zarr"),
        "--image-codec",
        "front=avif:80",
    ]
    assert main(args) == 0
    assert TrajectoryStore(tmp_path / "in.zarr").summary()["image_storage"] == {
        "front": "avif q80",
        "wrist": "raw (blosc zstd)",
    }
