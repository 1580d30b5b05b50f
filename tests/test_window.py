"""Training windows: padding and masks at episode boundaries, future frames, split by episode, loaders."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vla.data import TrajectoryStore, WindowConfig, WindowDataset, split_episodes
from vla.data.augment import AugmentConfig

# dataset fixture: lengths 5, 3, 7, 1, 4 -> episode starts 0, 5, 8, 15, 16; state[:, 0] = global frame


def window_at(ds, episode, t):
    i = next(i for i in range(len(ds)) if ds[i]["episode_index"] == episode and ds[i]["frame_index"] == t)
    return ds[i]


def test_window_count_and_fields(dataset):
    ds = WindowDataset(dataset, WindowConfig(n_obs_steps=2, horizon=4))
    assert len(ds) == 20
    w = ds[0]
    assert w["images"]["front"].shape == (2, 12, 16, 3) and w["images"]["front"].dtype == np.uint8
    assert w["state"].shape == (2, 3) and w["state"].dtype == np.float32
    assert w["action"].shape == (4, 2) and w["action_mask"].shape == (4,)
    assert w["instruction"] == "instruction 0" and w["task"] == "task0"
    assert "future_images" not in w


def test_padding_at_episode_start(dataset):
    ds = WindowDataset(dataset, WindowConfig(n_obs_steps=3, horizon=2))
    w = window_at(ds, 1, 0)  # episode 1 starts at global frame 5
    assert w["state"][:, 0].tolist() == [5, 5, 5]  # repeat-padded with the first frame, not episode 0's
    assert w["images"]["front"][:, 0, 0, 0].tolist() == [5, 5, 5]
    w = window_at(ds, 1, 1)
    assert w["state"][:, 0].tolist() == [5, 5, 6]
    w = window_at(ds, 2, 4)
    assert w["state"][:, 0].tolist() == [10, 11, 12]


def test_padding_and_mask_at_episode_end(dataset):
    ds = WindowDataset(dataset, WindowConfig(n_obs_steps=1, horizon=4))
    w = window_at(ds, 1, 1)  # episode 1 = frames 5, 6, 7
    assert w["action"][:, 0].tolist() == [6, 7, 7, 7]
    assert w["action_mask"].tolist() == [True, True, False, False]
    w = window_at(ds, 3, 0)  # one-frame episode (frame 15)
    assert w["action"][:, 0].tolist() == [15, 15, 15, 15]
    assert w["action_mask"].tolist() == [True, False, False, False]
    w = window_at(ds, 2, 0)  # episode 2 = frames 8..14, no padding needed
    assert w["action"][:, 0].tolist() == [8, 9, 10, 11] and w["action_mask"].all()
    assert w["action"][:, 1].tolist() == [0, -1, -2, -3]


def test_future_frame_offset(dataset):
    ds = WindowDataset(dataset, WindowConfig(n_obs_steps=1, horizon=2, future_offset=3))
    w = window_at(ds, 2, 1)  # frame 9 -> 12
    assert w["future_images"]["front"][0, 0, 0] == 12 and w["future_valid"]
    assert w["future_images"]["front"].shape == (12, 16, 3)
    w = window_at(ds, 2, 5)  # frame 13 -> 16 is past the end (14): clamped, not valid
    assert w["future_images"]["wrist"][0, 0, 0] == 14 and not w["future_valid"]
    w = window_at(ds, 0, 1)  # frame 1 -> 4 is the last frame of episode 0: valid
    assert w["future_images"]["front"][0, 0, 0] == 4 and w["future_valid"]


def test_split_by_episode_never_leaks(dataset):
    for seed in range(5):
        train_eps, val_eps = split_episodes(5, 0.4, seed)
        assert len(val_eps) == 2 and len(train_eps) == 3 and not set(train_eps) & set(val_eps)
        assert sorted([*train_eps, *val_eps]) == list(range(5))
    assert split_episodes(5, 0.4, 0)[1].tolist() == split_episodes(5, 0.4, 0)[1].tolist()  # seeded
    store = TrajectoryStore(dataset)
    train_eps, val_eps = split_episodes(store.num_episodes, 0.4, 1)
    train = WindowDataset(store, WindowConfig(horizon=4), train_eps)
    val = WindowDataset(store, WindowConfig(horizon=4), val_eps, arrays=train.arrays)
    train_frames = {int(train[i]["state"][-1, 0]) for i in range(len(train))}
    val_frames = {int(val[i]["state"][-1, 0]) for i in range(len(val))}
    assert not train_frames & val_frames and len(train_frames | val_frames) == 20
    # every action a window sees belongs to its own episode
    for ds in (train, val):
        eps = set(ds.episodes.tolist())
        for i in range(len(ds)):
            assert {int(a) for a in ds[i]["action"][:, 0]} <= set(
                range(*_bounds(ds.store, ds[i]["episode_index"]))
            )
            assert ds[i]["episode_index"] in eps
    assert val.arrays is train.arrays  # loaded once


def _bounds(store, ep):
    s = store.episode_slice(ep)
    return s.start, s.stop


def test_zarr_backed_matches_in_memory(dataset):
    cfg = dict(n_obs_steps=2, horizon=3, future_offset=2)
    mem = WindowDataset(dataset, WindowConfig(**cfg, in_memory=True))
    disk = WindowDataset(dataset, WindowConfig(**cfg, in_memory=False))
    for i in range(len(mem)):
        a, b = mem[i], disk[i]
        for cam in ("front", "wrist"):
            np.testing.assert_array_equal(a["images"][cam], b["images"][cam])
            np.testing.assert_array_equal(a["future_images"][cam], b["future_images"][cam])
        np.testing.assert_array_equal(a["action"], b["action"])


def test_in_memory_auto_loads_what_fits_and_reads_zarr_otherwise(dataset):
    """The default ``in_memory: auto`` decodes the frames into RAM under ``max_memory_gb`` (the fixture's
    2 cameras x 20 frames x 12 x 16 x 3 = 23040 bytes), else reads Zarr; the windows are the same."""
    cfg = dict(n_obs_steps=2, horizon=3, future_offset=2)
    assert WindowConfig().in_memory == "auto"
    fits = WindowDataset(dataset, WindowConfig(**cfg, max_memory_gb=23040 / 2**30))
    over = WindowDataset(dataset, WindowConfig(**cfg, max_memory_gb=23039 / 2**30))
    assert fits.arrays.in_memory and not over.arrays.in_memory
    assert isinstance(fits.arrays.images["front"], np.ndarray)
    assert not isinstance(over.arrays.images["front"], np.ndarray)
    for i in range(len(fits)):
        a, b = fits[i], over[i]
        for cam in a["images"]:
            np.testing.assert_array_equal(a["images"][cam], b["images"][cam])
        np.testing.assert_array_equal(a["action"], b["action"])


@pytest.mark.parametrize("in_memory", [True, False])
def test_dataloader_with_workers(dataset, in_memory):
    ds = WindowDataset(dataset, WindowConfig(n_obs_steps=2, horizon=4, in_memory=in_memory))
    loader = DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["instruction"]) for b in batches) == 20
    b = batches[0]
    assert isinstance(b["images"]["front"], torch.Tensor) and b["images"]["front"].shape == (8, 2, 12, 16, 3)
    assert b["action_mask"].dtype == torch.bool
    got = torch.cat([b["state"][:, -1, 0] for b in batches]).tolist()
    assert got == list(range(20))


def test_augmentation_keeps_shapes_and_is_seeded(dataset):
    cfg = WindowConfig(
        n_obs_steps=2,
        horizon=2,
        future_offset=1,
        augment=AugmentConfig(enabled=True, shift_pad=2, brightness=0.3, contrast=0.3),
    )
    ds = WindowDataset(dataset, cfg)
    plain = WindowDataset(dataset, WindowConfig(n_obs_steps=2, horizon=2, future_offset=1))
    torch.manual_seed(0)
    a = ds[7]
    torch.manual_seed(0)
    b = ds[7]
    assert a["images"]["front"].shape == (2, 12, 16, 3) and a["images"]["front"].dtype == np.uint8
    np.testing.assert_array_equal(a["images"]["front"], b["images"]["front"])
    changed = [not np.array_equal(ds[7]["images"]["wrist"], plain[7]["images"]["wrist"]) for _ in range(10)]
    assert any(changed)
    np.testing.assert_array_equal(a["action"], plain[7]["action"])  # only images change


def test_bad_window_config(dataset):
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        WindowConfig(horizon=0)
    with pytest.raises(KeyError, match="cameras \\['top'\\] are not in dataset"):
        WindowDataset(dataset, WindowConfig(cameras=["top"]))
    with pytest.raises(IndexError, match="episode indices must be in"):
        WindowDataset(TrajectoryStore(dataset), WindowConfig(), episodes=[7])


# -- reading frames from disk (issue 27: windows/s from disk) ------------------------------------------
@pytest.mark.parametrize("image_codec", [None, "jpeg"])
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_frame_reader_reads_what_zarr_reads(tmp_path, image_codec, chunk):
    from conftest import make_meta, write_dataset

    from vla.data.frame_reader import FrameReader

    url = tmp_path / "d.zarr"
    meta = make_meta(image_size={"front": (12, 16), "wrist": (8, 8)})
    write_dataset(url, meta=meta, image_chunk_frames=chunk, image_codec=image_codec)
    store = TrajectoryStore(url)
    for cam in ("front", "wrist"):
        reader = FrameReader.open(store.images(cam), store.url, f"data/images/{cam}")
        assert reader is not None
        for frames in ([0], [19], [2, 3, 4, 11, 19], list(range(20)), []):
            np.testing.assert_array_equal(
                reader.read(np.array(frames, np.int64)),
                store.images(cam).get_orthogonal_selection((np.array(frames, np.int64),)),
                err_msg=f"{cam} {frames}",
            )
        with pytest.raises(IndexError, match=r"outside \[0, 20\)"):
            reader.read(np.array([20]))
    # a chunk file never written reads as the fill value, as through zarr
    (url / "data/images/front/c/0/0/0/0").unlink()
    reader = FrameReader.open(store.images("front"), store.url, "data/images/front")
    np.testing.assert_array_equal(reader.read(np.array([0])), store.images("front")[0:1])


def test_frame_reader_leaves_other_layouts_to_zarr(tmp_path):
    import zarr

    from vla.data.frame_reader import FrameReader

    frame = (8, 8, 3)
    sharded = zarr.create_array(
        str(tmp_path / "s"), shape=(4, *frame), chunks=(1, *frame), shards=(4, *frame), dtype="uint8"
    )
    tiled = zarr.create_array(str(tmp_path / "t"), shape=(4, 8, 8, 3), chunks=(1, 4, 8, 3), dtype="uint8")
    assert FrameReader.open(sharded, str(tmp_path), "s") is None
    assert FrameReader.open(tiled, str(tmp_path), "t") is None
    assert FrameReader.open(tiled, "s3://bucket/x.zarr", "t") is None


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_read_from_disk_equal_batches_from_memory(dataset, workers):
    """The DataLoader hands a batch's indices to ``__getitems__``: from disk, one read per camera per
    batch. Same batches as from RAM, future frames included."""
    cfg = dict(n_obs_steps=3, horizon=4, future_offset=2)
    mem = WindowDataset(dataset, WindowConfig(**cfg, in_memory=True))
    disk = WindowDataset(dataset, WindowConfig(**cfg, in_memory=False))
    calls = []
    if workers == 0:
        original = disk.arrays.many_frames
        disk.arrays.many_frames = lambda cam, frames: calls.append(cam) or original(cam, frames)
    order = list(np.random.default_rng(0).permutation(20))
    a = list(DataLoader(mem, batch_size=8, sampler=order, num_workers=workers))
    b = list(DataLoader(disk, batch_size=8, sampler=order, num_workers=workers))
    for x, y in zip(a, b, strict=True):
        for cam in ("front", "wrist"):
            assert torch.equal(x["images"][cam], y["images"][cam])
            assert torch.equal(x["future_images"][cam], y["future_images"][cam])
        assert torch.equal(x["action"], y["action"]) and x["instruction"] == y["instruction"]
    if workers == 0:
        assert len(calls) == 3 * 2  # 3 batches x 2 cameras, not one read per window
