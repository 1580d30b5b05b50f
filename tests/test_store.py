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


# -- mixed camera sizes and liberal reading (issue 27) ----------------------------------------------
MIXED = {"front": (12, 16), "wrist": (8, 6)}


def test_cameras_of_different_sizes_round_trip_and_are_checked_each(tmp_path):
    url = tmp_path / "mixed.zarr"
    meta = write_dataset(url, meta=make_meta(image_size=MIXED))
    store = TrajectoryStore(url)
    assert store.meta.image_sizes == MIXED and store.meta.image_shape("wrist") == (8, 6, 3)
    assert store.group.attrs["version"] == 2  # readers from before per-camera sizes refuse, not misread
    assert store.images("wrist").shape == (20, 8, 6, 3) and store.images("front").shape == (20, 12, 16, 3)
    np.testing.assert_array_equal(
        store.episode(2)["images"]["wrist"], make_episode(2, 7, 8, meta)["images"]["wrist"]
    )
    assert store.summary()["image_size"] == {"front": [12, 16], "wrist": [8, 6]}
    assert validate(url).ok
    episode = make_episode(5, 2, 20, meta)
    episode["images"]["wrist"] = np.zeros((2, 12, 16, 3), np.uint8)  # the front camera's size
    with (
        TrajectoryWriter(url) as w,
        pytest.raises(SchemaError, match=r"images\['wrist'\].*expected \(T, 8, 6, 3\)"),
    ):
        w.add_episode(**episode)
    assert TrajectoryStore(url).num_episodes == 5  # nothing lost
    with pytest.raises(SchemaError, match=r"images\['wrist'\] \[12, 16\] \(H, W\) vs \[8, 6\]"):
        TrajectoryWriter(url, make_meta())  # same cameras, one size for all: refused, camera named
    # a uniform rig keeps the one-size form and version 1
    assert make_meta(image_size={"front": (4, 4), "wrist": (4, 4)}).to_attrs()["image_size"] == [4, 4]
    with pytest.raises(SchemaError, match="expected one \\(H, W\\) for each of"):
        make_meta(image_size={"front": (4, 4)})


def hand_written(url, attrs: dict, state_dim=3, action_dim=2, n=6):
    """A dataset written with plain zarr to DESIGN.md's schema, without vla's writer."""
    g = zarr.open_group(str(url), mode="w", zarr_format=3)
    g.attrs.update(attrs)
    g.create_array("data/images/front", data=np.full((n, 10, 14, 3), 7, np.uint8))
    g.create_array("data/images/wrist", data=np.full((n, 6, 8, 3), 9, np.uint8))
    g.create_array("data/state", data=np.arange(n * state_dim, dtype=np.float32).reshape(n, state_dim))
    g.create_array(
        "data/action", data=np.linspace(-2, 3, n * action_dim, dtype=np.float32).reshape(n, action_dim)
    )
    g.create_array("meta/episode_ends", data=np.array([2, n], np.int64))
    for path, values in (("meta/instruction", ["a", "b"]), ("meta/task", ["t", "t"])):
        g.create_array(path, shape=(2,), dtype=str)[:] = np.array(values, dtype=object)
    g.create_array("meta/success", data=np.array([True, True]))


SCHEMA_ATTRS = {
    "format": "vla.trajectories",
    "version": 1,
    "fps": 15,
    "robot": "so101",
    "cameras": ["front", "wrist"],
    "action_space": {"low": [-2, -2], "high": [3, 3], "kind": "absolute_joint_pos"},
}


def test_a_dataset_written_to_the_schema_opens_with_what_its_arrays_say(tmp_path):
    hand_written(tmp_path / "h.zarr", SCHEMA_ATTRS)  # no image_size, state_dim, action_space.dim
    store = TrajectoryStore(tmp_path / "h.zarr")
    assert store.meta.image_sizes == {"front": (10, 14), "wrist": (6, 8)}
    assert store.meta.state_dim == 3 and store.meta.action_dim == 2 and store.meta.fps == 15
    assert store.meta.action_space.kind == "absolute_joint_pos" and store.meta.action_space.low == [-2, -2]
    assert store.meta.extra["derived_from_arrays"] == ["image_size", "state_dim", "action_space.dim"]
    assert store.num_episodes == 2 and store.episode(1)["images"]["wrist"].shape == (4, 6, 8, 3)
    assert validate(tmp_path / "h.zarr").ok
    # without bounds and cameras either: the data's min/max, the image groups' names
    bare = {k: v for k, v in SCHEMA_ATTRS.items() if k not in ("action_space", "cameras")}
    hand_written(tmp_path / "bare.zarr", bare)
    meta = TrajectoryStore(tmp_path / "bare.zarr").meta
    assert meta.cameras == ["front", "wrist"]
    np.testing.assert_allclose(meta.action_space.low, np.linspace(-2, 3, 12).reshape(6, 2).min(0), rtol=1e-6)
    np.testing.assert_allclose(meta.action_space.high, np.linspace(-2, 3, 12).reshape(6, 2).max(0), rtol=1e-6)


@pytest.mark.parametrize(
    "attrs, message",
    [
        (
            {"image_size": [96, 96]},
            r"images\['front'\]: attrs.image_size says \[96, 96\], the array is \[10, 14\]",
        ),
        (
            {"image_size": {"front": [10, 14], "wrist": [10, 14]}},
            r"images\['wrist'\].*says \[10, 14\], the array is \[6, 8\]",
        ),
        ({"state_dim": 7}, r"state_dim is 7, data/state has 3"),
        ({"action_space": {"dim": 5, "low": -1, "high": 1}}, r"action_space.dim is 5, data/action has 2"),
    ],
)
def test_attrs_that_contradict_the_arrays_name_both(tmp_path, attrs, message):
    hand_written(tmp_path / "h.zarr", SCHEMA_ATTRS | attrs)
    with pytest.raises(SchemaError, match=message):
        TrajectoryStore(tmp_path / "h.zarr")
    with pytest.raises(SchemaError, match=message):
        TrajectoryWriter(tmp_path / "h.zarr")
    assert not validate(tmp_path / "h.zarr").ok
