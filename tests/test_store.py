import numpy as np
import pytest
import zarr
from conftest import make_episode, make_meta, write_dataset

from vla.data import DatasetMeta, SchemaError, TrajectoryStore, TrajectoryWriter, validate
from vla.data.writer import EpisodeRecorder


def test_round_trip_frames_and_metadata(dataset):
    store = TrajectoryStore(dataset)
    meta = make_meta()
    assert store.num_episodes == 5 and store.num_frames == 20
    assert store.episode_lengths.tolist() == [5, 3, 7, 1, 4]
    assert store.episode_ends.tolist() == [5, 8, 15, 16, 20]
    assert store.meta.cameras == meta.cameras
    assert store.meta.image_size == meta.image_size
    assert store.meta.action_space == meta.action_space
    assert store.meta.fps == 10 and store.meta.robot == "panda" and store.meta.env == "builtin/test"
    assert store.meta.created_with.startswith("vla ")
    start = 0
    for e, n in enumerate([5, 3, 7, 1, 4]):
        expected = make_episode(e, n, start)
        got = store.episode(e)
        for cam in meta.cameras:
            np.testing.assert_array_equal(got["images"][cam], expected["images"][cam])
        np.testing.assert_array_equal(got["state"], expected["state"])
        np.testing.assert_array_equal(got["action"], expected["action"])
        assert got["instruction"] == expected["instruction"]
        assert got["task"] == expected["task"]
        assert got["success"] == expected["success"]
        start += n
    assert store.success.tolist() == [False, True, True, False, True]
    assert store.seeds.tolist() == [-1] * 5
    # the on-disk layout is DESIGN.md's schema
    g = zarr.open_group(str(dataset), mode="r")
    assert g["data/images/front"].dtype == np.uint8 and g["data/images/front"].shape == (20, 12, 16, 3)
    assert g["data/state"].dtype == np.float32 and g["meta/episode_ends"].dtype == np.int64
    assert g.attrs["format"] == "vla.trajectories" and g.attrs["version"] == 1


def test_reopen_appends_and_checks_metadata(dataset):
    with TrajectoryWriter(dataset) as w:  # no meta: read from the dataset
        assert w.num_episodes == 5
        w.add_episode(**make_episode(5, 2, 20))
    store = TrajectoryStore(dataset)
    assert store.num_episodes == 6 and store.episode_ends[-1] == 22
    np.testing.assert_array_equal(store.episode(5)["state"][:, 0], [20, 21])
    with pytest.raises(SchemaError, match="state_dim 4 vs 3"):
        TrajectoryWriter(dataset, make_meta(state_dim=4))


def test_missing_dataset_needs_meta(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass `meta`"):
        TrajectoryWriter(tmp_path / "new.zarr")
    with pytest.raises(FileNotFoundError, match="no Zarr dataset"):
        TrajectoryStore(tmp_path / "new.zarr")


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda ep: ep["images"].__setitem__("front", ep["images"]["front"].astype(np.float32)),
            r"images\['front'\] has dtype float32, expected uint8",
        ),
        (
            lambda ep: ep["images"].__setitem__("front", ep["images"]["front"][:, :, :8]),
            r"images\['front'\] has shape \(4, 12, 8, 3\), expected \(T, 12, 16, 3\)",
        ),
        (lambda ep: ep["images"].pop("wrist"), r"cameras \['front'\], dataset expects \['front', 'wrist'\]"),
        (
            lambda ep: ep.__setitem__("state", ep["state"].astype(np.int64)),
            r"state has dtype int64, expected a float array",
        ),
        (
            lambda ep: ep.__setitem__("action", ep["action"][:, :1]),
            r"action has shape \(4, 1\), expected \(T, 2\)",
        ),
        (lambda ep: ep.__setitem__("action", ep["action"][:3]), r"disagree on the number of frames"),
        (
            lambda ep: ep["state"].__setitem__((2, 1), np.nan),
            r"state has a non-finite value nan at frame 2, dim 1",
        ),
        (lambda ep: ep.__setitem__("instruction", 3), r"instruction must be a str"),
    ],
)
def test_bad_episode_is_rejected_and_dataset_survives(dataset, change, match):
    episode = make_episode(5, 4, 20)
    change(episode)
    with TrajectoryWriter(dataset) as w:
        with pytest.raises((SchemaError, TypeError), match=match):
            w.add_episode(**episode)
        w.add_episode(**make_episode(5, 2, 20))  # the writer keeps working
    store = TrajectoryStore(dataset)
    assert store.episode_lengths.tolist() == [5, 3, 7, 1, 4, 2]
    assert validate(dataset).ok


def test_empty_episode_rejected(tmp_path):
    meta = make_meta()
    with TrajectoryWriter(tmp_path / "d.zarr", meta) as w, pytest.raises(SchemaError, match="no frames"):
        w.add_episode(**make_episode(0, 0, 0))


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_urls(tmp_path, scheme):
    url = f"memory://vla-test-{tmp_path.name}.zarr" if scheme == "memory" else f"file://{tmp_path}/d.zarr"
    write_dataset(url, lengths=(2, 3))
    store = TrajectoryStore(url)
    assert store.episode_lengths.tolist() == [2, 3]
    np.testing.assert_array_equal(store.load("action")[:, 0], np.arange(5))
    assert validate(url).ok


def test_meta_validation():
    with pytest.raises(SchemaError, match="fps must be > 0"):
        make_meta(fps=0)
    with pytest.raises(SchemaError, match="camera names must be unique"):
        make_meta(cameras=["a", "a"])
    with pytest.raises(SchemaError, match="low must be <= high"):
        make_meta(action_space=dict(dim=2, low=[1, 0], high=[0, 1]))
    meta = make_meta()
    assert DatasetMeta.from_attrs(meta.to_attrs()) == meta
    with pytest.raises(SchemaError, match="not a vla trajectory dataset"):
        DatasetMeta.from_attrs({"format": "other"})


def test_episode_recorder(tmp_path):
    meta = make_meta()
    expected = make_episode(0, 4, 0, meta)
    rec = EpisodeRecorder(meta.cameras)
    for t in range(4):
        obs = {
            "images": {c: expected["images"][c][t] for c in meta.cameras},
            "state": expected["state"][t],
            "instruction": expected["instruction"],
        }
        rec.add(obs, expected["action"][t])
    with TrajectoryWriter(tmp_path / "r.zarr", meta) as w:
        w.add_episode(**rec.episode(), task="t", success=True)
    got = TrajectoryStore(tmp_path / "r.zarr").episode(0)
    np.testing.assert_array_equal(got["images"]["wrist"], expected["images"]["wrist"])
    np.testing.assert_array_equal(got["action"], expected["action"])
    assert got["instruction"] == expected["instruction"]


def test_summary(dataset):
    s = TrajectoryStore(dataset).summary()
    assert s["episodes"] == 5 and s["frames"] == 20
    assert s["episode_length"] == {"min": 1, "mean": 4.0, "max": 7}
    assert s["tasks"] == {"task0": 3, "task1": 2}
    assert s["success_rate"] == 0.6
    assert s["bytes_stored"] > 0 and s["stats"] is None and s["partial_tail"] is None


def test_training_targets_round_trip_merge_and_windows(tmp_path):
    """Privileged per-frame targets (data/targets): written with the episode, required when declared,
    carried by merge, and handed to training windows for the frame they belong to."""
    from vla.data.merge import merge
    from vla.data.window import WindowConfig, WindowDataset

    meta = make_meta(extra={"targets": ["block_x", "block_y"]})
    paths = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for k, path in enumerate(paths):
        with TrajectoryWriter(path, meta) as w:
            for e, length in enumerate((3, 4)):
                episode = make_episode(e, length, 0, meta)
                targets = np.stack([np.arange(length) + 10 * e + 100 * k, -np.arange(length)], 1).astype(
                    np.float32
                )
                w.add_episode(**episode, targets=targets)
            with pytest.raises(SchemaError, match=r"declares training targets \['block_x', 'block_y'\]"):
                w.add_episode(**make_episode(2, 2, 0, meta))
            with pytest.raises(SchemaError, match=r"targets has shape \(2, 3\), expected \(T, 2\)"):
                w.add_episode(**make_episode(2, 2, 0, meta), targets=np.zeros((2, 3), np.float32))
    store = TrajectoryStore(paths[0])
    assert store.num_episodes == 2 and store.meta.target_names == [
        "block_x",
        "block_y",
    ]  # refusals wrote nothing
    np.testing.assert_array_equal(store.episode(1)["targets"][:, 0], [10, 11, 12, 13])
    merge([str(p) for p in paths], tmp_path / "ab.zarr", progress=False)
    merged = TrajectoryStore(tmp_path / "ab.zarr")
    assert merged.meta.target_names == ["block_x", "block_y"]
    np.testing.assert_array_equal(merged.episode(3)["targets"][:, 0], [110, 111, 112, 113])
    windows = WindowDataset(merged, WindowConfig(n_obs_steps=2, horizon=2))
    assert [float(windows[i]["targets"][0]) for i in range(len(windows))] == [
        0,
        1,
        2,
        10,
        11,
        12,
        13,
        100,
        101,
        102,
        110,
        111,
        112,
        113,
    ]
    with TrajectoryWriter(tmp_path / "plain.zarr", make_meta()) as w:
        with pytest.raises(SchemaError, match="declares none"):
            w.add_episode(**make_episode(0, 2, 0), targets=np.zeros((2, 2), np.float32))
        w.add_episode(**make_episode(0, 2, 0))
    merge([str(paths[0]), str(tmp_path / "plain.zarr")], tmp_path / "mixed.zarr", progress=False)
    mixed = TrajectoryStore(tmp_path / "mixed.zarr")  # not every source has them: the merge drops them
    assert mixed.meta.target_names == [] and "targets" not in mixed.episode(0) and mixed.num_episodes == 3
