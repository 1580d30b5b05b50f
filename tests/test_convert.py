"""Converters: source files built here following each format's documented layout; lossless round trips."""

import json

import numpy as np
import pytest
import zarr
from conftest import make_meta, write_dataset

from vla.cli import main
from vla.data import TrajectoryStore, TrajectoryWriter, validate
from vla.data.convert import ConversionError, convert, detect_format, from_lerobot, to_lerobot

RNG = np.random.default_rng(0)


def smooth_frames(length, h, w, seed):
    """Rendered-looking frames (gradients + a moving square): lossy codecs keep them close."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((length, h, w, 3), np.uint8)
    for t in range(length):
        frames[t, ..., 0] = (xx * 255 // w + 7 * seed) % 256
        frames[t, ..., 1] = yy * 255 // h
        frames[t, ..., 2] = 128
        frames[t, 8 + t % 8 : 24 + t % 8, 10:26] = (250, 30, 30)
    return frames


# -- robomimic ----------------------------------------------------------------------------------
def make_robomimic(path, lengths=(5, 3, 6), names=("demo_0", "demo_1", "demo_10")):
    import h5py

    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20, "robots": ["Panda"]}}
        )
        for name, n in zip(names, lengths, strict=True):
            g = data.create_group(name)
            obs = {
                "agentview_image": RNG.integers(0, 256, (n, 16, 20, 3), dtype=np.uint8),
                "robot0_eye_in_hand_image": RNG.integers(0, 256, (n, 16, 20, 3), dtype=np.uint8),
                "robot0_eef_pos": RNG.normal(size=(n, 3)).astype(np.float32),
                "robot0_eef_quat": RNG.normal(size=(n, 4)).astype(np.float32),
                "robot0_gripper_qpos": RNG.normal(size=(n, 2)).astype(np.float32),
                "object": RNG.normal(size=(n, 10)).astype(np.float32),
            }
            for k, v in obs.items():
                g.create_dataset(f"obs/{k}", data=v)
            actions = RNG.uniform(-1, 1, (n, 7)).astype(np.float32)
            g.create_dataset("actions", data=actions)
            g.create_dataset("states", data=RNG.normal(size=(n, 32)))
            g.create_dataset("rewards", data=np.zeros(n))
            g.create_dataset("dones", data=np.r_[np.zeros(n - 1), 1])
            g.attrs["num_samples"] = n
            demos[name] = (obs, actions)
        data.attrs["total"] = sum(lengths)
    return demos


def assert_stats_match_the_data(store) -> None:
    stats = store.stats()
    for key in ("state", "action"):
        values = store.load(key).astype(np.float64)
        np.testing.assert_allclose(stats[key]["mean"], values.mean(0), rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(stats[key]["min"], values.min(0), rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(stats[key]["max"], values.max(0), rtol=1e-6, err_msg=key)


def test_robomimic_round_trip(tmp_path):
    src, dst = tmp_path / "lift.hdf5", tmp_path / "lift.zarr"
    demos = make_robomimic(src)
    assert detect_format(src) == "robomimic"
    summary = convert(src, dst, progress=False)
    assert summary["episodes"] == 3 and summary["frames"] == 14 and summary["validated"]
    store = TrajectoryStore(dst)
    assert store.meta.cameras == ["agentview", "robot0_eye_in_hand"] and store.meta.fps == 20
    assert store.meta.robot == "panda" and store.meta.state_dim == 9 and store.meta.action_dim == 7
    assert store.episode_lengths.tolist() == [5, 3, 6]  # demo_0, demo_1, demo_10: numeric order
    for e, name in enumerate(("demo_0", "demo_1", "demo_10")):
        obs, actions = demos[name]
        ep = store.episode(e)
        np.testing.assert_array_equal(ep["images"]["agentview"], obs["agentview_image"])
        np.testing.assert_array_equal(ep["images"]["robot0_eye_in_hand"], obs["robot0_eye_in_hand_image"])
        expected_state = np.concatenate(
            [obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"]], 1
        )
        np.testing.assert_array_equal(ep["state"], expected_state)
        np.testing.assert_array_equal(ep["action"], actions)
        assert ep["instruction"] == "lift the red cube" and ep["task"] == "Lift"
    assert_stats_match_the_data(store)  # computed at the end, over every frame
    assert not list(tmp_path.glob(".*converting*"))


def test_robomimic_errors_leave_nothing(tmp_path, capsys):
    src, dst = tmp_path / "lift.hdf5", tmp_path / "out.zarr"
    make_robomimic(src)
    with pytest.raises(ConversionError, match=r"state keys \['joint_pos'\] not in data/demo_0/obs"):
        convert(src, dst, state_keys=["joint_pos"], progress=False)
    import h5py

    with h5py.File(src, "a") as f:  # corrupt the last demo: one frame missing from an image key
        del f["data/demo_10/obs/agentview_image"]
        f["data/demo_10/obs/agentview_image"] = RNG.integers(0, 256, (5, 16, 20, 3), dtype=np.uint8)
    with pytest.raises(
        ConversionError, match="data/demo_10/obs/agentview_image has 5 frames but actions has 6"
    ):
        convert(src, dst, progress=False)
    assert not dst.exists() and not list(tmp_path.glob(".*converting*"))  # nothing that looks complete
    assert main(["data", "convert", str(src), str(dst)]) == 2
    assert "agentview_image has 5 frames" in capsys.readouterr().err


# -- Diffusion Policy ---------------------------------------------------------------------------
def make_dp(path, lengths=(4, 6)):
    n = sum(lengths)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    img = RNG.integers(0, 256, (n, 12, 12, 3)).astype(np.float32)  # pusht stores float32 0..255
    state = RNG.normal(size=(n, 5)).astype(np.float32)
    action = RNG.normal(size=(n, 2)).astype(np.float32)
    root.create_array("data/img", data=img, chunks=(8, 12, 12, 3))
    root.create_array("data/state", data=state)
    root.create_array("data/action", data=action)
    root.create_array("data/keypoint", data=np.zeros((n, 9, 2), np.float32))
    root.create_array("meta/episode_ends", data=np.cumsum(lengths).astype(np.int64))
    return img, state, action


def test_diffusion_policy_round_trip(tmp_path):
    src, dst = tmp_path / "pusht.zarr", tmp_path / "out.zarr"
    img, state, action = make_dp(src)
    assert detect_format(src) == "diffusion_policy"
    convert(src, dst, instruction="push the T block onto the target", fps=10, progress=False)
    store = TrajectoryStore(dst)
    assert store.episode_ends.tolist() == [4, 10] and store.meta.cameras == ["image"]
    np.testing.assert_array_equal(store.load("images/image"), img.astype(np.uint8))
    np.testing.assert_array_equal(store.load("state"), state)
    np.testing.assert_array_equal(store.load("action"), action)
    assert set(store.instructions) == {"push the T block onto the target"} and store.meta.fps == 10
    with pytest.raises(ConversionError, match=r"key_map names \['rgb'\], not in data/"):
        convert(src, tmp_path / "x.zarr", key_map={"rgb": "images/top", "action": "action"}, progress=False)
    root = zarr.open_group(str(src), mode="r+")
    root["meta/episode_ends"][1] = 11
    with pytest.raises(ConversionError, match=r"data/img has 10 rows but meta/episode_ends\[-1\] = 11"):
        convert(src, tmp_path / "y.zarr", progress=False)


def test_diffusion_policy_zarr_zip_through_the_cli_with_from_and_overwrite(tmp_path, capsys):
    """Diffusion Policy ships datasets as ``.zarr.zip`` (a zarr v2 ZipStore); --from picks the reader instead
    of detection; --overwrite replaces an existing dataset, which is otherwise refused and left intact."""
    import zipfile

    directory, src, dst = tmp_path / "pusht.zarr", tmp_path / "pusht.zarr.zip", tmp_path / "out.zarr"
    img, state, action = make_dp(directory)
    with zipfile.ZipFile(src, "w") as archive:  # the ZipStore layout: the store's keys as member names
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(directory).as_posix())
    assert detect_format(src) == "diffusion_policy"
    args = ["data", "convert", str(src), str(dst), "--instruction", "push the T", "--fps", "10"]
    assert main(args) == 0
    store = TrajectoryStore(dst)
    np.testing.assert_array_equal(store.load("images/image"), img.astype(np.uint8))
    np.testing.assert_array_equal(store.load("action"), action)
    assert set(store.instructions) == {"push the T"} and store.meta.fps == 10
    capsys.readouterr()
    assert main([*args[:4], "--instruction", "push the T again"]) == 2  # exists: refused...
    assert "already exists" in capsys.readouterr().err
    assert set(TrajectoryStore(dst).instructions) == {"push the T"}  # ...and left as it was
    assert main([*args[:4], "--instruction", "push the T again", "--overwrite"]) == 0
    assert set(TrajectoryStore(dst).instructions) == {"push the T again"} and validate(dst).ok
    # --from is obeyed, not second-guessed: this source is no robomimic file
    assert main([*args[:3], str(tmp_path / "r.zarr"), "--from", "robomimic"]) == 2
    assert not (tmp_path / "r.zarr").exists()
    assert main([*args[:3], str(tmp_path / "d.zarr"), "--from", "diffusion_policy"]) == 0
    np.testing.assert_array_equal(TrajectoryStore(tmp_path / "d.zarr").load("state"), state)


# -- LeRobot v3.0 -------------------------------------------------------------------------------
def test_lerobot_lossless_round_trip_with_videos_across_files(tmp_path, dataset):
    out, back = tmp_path / "lerobot", tmp_path / "back.zarr"
    to_lerobot(dataset, out, video_codec="libx264rgb", episodes_per_file=2, progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 5 and info["fps"] == 10
    assert info["features"]["observation.images.front"]["dtype"] == "video"
    assert len(list((out / "videos" / "observation.images.front").glob("chunk-000/file-*.mp4"))) == 3
    assert len(list((out / "data").glob("chunk-000/file-*.parquet"))) == 3
    assert detect_format(out) == "lerobot"
    convert(out, back, progress=False)
    check_same(dataset, back)


def test_lerobot_inline_images_round_trip(tmp_path, dataset):
    out, back = tmp_path / "lerobot", tmp_path / "back.zarr"
    to_lerobot(dataset, out, video_codec=None, progress=False)
    assert (
        json.loads((out / "meta" / "info.json").read_text())["features"]["observation.images.wrist"]["dtype"]
        == "image"
    )
    from_lerobot(out, back, progress=False)
    check_same(dataset, back)


def check_same(a_url, b_url):
    a, b = TrajectoryStore(a_url), TrajectoryStore(b_url)
    assert a.episode_ends.tolist() == b.episode_ends.tolist()
    assert a.instructions.tolist() == b.instructions.tolist()
    assert a.meta.fps == b.meta.fps and a.meta.cameras == b.meta.cameras
    for key in ("state", "action", "images/front", "images/wrist"):
        np.testing.assert_array_equal(a.load(key), b.load(key), err_msg=key)
    assert validate(b_url).ok


@pytest.mark.parametrize("codec", ["libx264", "libsvtav1"])
def test_lerobot_lossy_codecs_decode(tmp_path, codec):
    src = tmp_path / "smooth.zarr"
    meta = make_meta(image_size=(64, 64), cameras=["top"])
    with TrajectoryWriter(src, meta) as w:
        for e, n in enumerate((12, 9)):
            w.add_episode(
                images={"top": smooth_frames(n, 64, 64, e)},
                state=np.zeros((n, 3), np.float32),
                action=np.ones((n, 2), np.float32) * e,
                instruction=f"task {e}",
            )
    out, back = tmp_path / "lr", tmp_path / "back.zarr"
    to_lerobot(src, out, video_codec=codec, progress=False)
    from_lerobot(out, back, progress=False)
    a, b = TrajectoryStore(src), TrajectoryStore(back)
    assert b.episode_lengths.tolist() == [12, 9]  # frame-exact boundaries through the codec
    err = np.abs(a.load("images/top").astype(int) - b.load("images/top").astype(int)).mean()
    assert err < 6, err
    np.testing.assert_array_equal(a.load("action"), b.load("action"))


def test_lerobot_reader_takes_lerobot_tasks_table_and_rejects_v2(tmp_path, dataset):
    import pandas as pd

    out = tmp_path / "lerobot"
    to_lerobot(dataset, out, video_codec=None, progress=False)
    # LeRobot itself stores tasks with the task string as the DataFrame index
    tasks = pd.DataFrame({"task_index": [0, 1]}, index=pd.Index(["instruction 0", "other"], name="task"))
    tasks.to_parquet(out / "meta" / "tasks.parquet")
    assert from_lerobot(out, tmp_path / "b.zarr", progress=False)["episodes"] == 5
    info = json.loads((out / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    (out / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ConversionError, match="only v3.x is read"):
        from_lerobot(out, tmp_path / "c.zarr", progress=False)


def test_cli_convert(tmp_path, dataset, capsys):
    out = tmp_path / "lr"
    assert main(["data", "convert", str(dataset), str(out), "--to", "lerobot", "--video-codec", "none"]) == 0
    assert main(["data", "convert", str(out), str(tmp_path / "back.zarr")]) == 0
    assert '"validated": true' in capsys.readouterr().out
    assert main(["data", "convert", str(out), str(tmp_path / "back.zarr")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "convert", str(tmp_path / "nothing"), str(tmp_path / "z.zarr")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err


def test_merge_keeps_every_episode_and_names_the_suite(tmp_path, capsys):
    from vla.cli import main
    from vla.data import TrajectoryStore
    from vla.data.merge import merged_env

    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    write_dataset(a, lengths=(3, 2), meta=make_meta(env="builtin/push"))
    write_dataset(b, lengths=(4,), meta=make_meta(env="builtin/reach"))
    assert main(["data", "merge", str(a), str(b), "--out", str(tmp_path / "ab.zarr")]) == 0
    merged = TrajectoryStore(tmp_path / "ab.zarr")
    assert (
        merged.num_episodes == 3
        and list(merged.episode_lengths) == [3, 2, 4]
        and merged.meta.env == "builtin"
    )
    src = TrajectoryStore(b).episode(0)
    np.testing.assert_array_equal(merged.episode(2)["images"]["front"], src["images"]["front"])
    np.testing.assert_array_equal(merged.episode(2)["action"], src["action"])
    assert merged.episode(2)["instruction"] == src["instruction"]
    assert_stats_match_the_data(merged)
    assert (
        merged_env(["metaworld/reach-v3", "robosuite/Lift"]) is None and merged_env(["x/y", "x/y"]) == "x/y"
    )
    # a dataset with other cameras is refused and nothing is left behind
    write_dataset(tmp_path / "c.zarr", lengths=(2,), meta=make_meta(cameras=["front"]))
    assert main(["data", "merge", str(a), str(tmp_path / "c.zarr"), "--out", str(tmp_path / "bad.zarr")]) == 2
    assert "cameras" in capsys.readouterr().err and not (tmp_path / "bad.zarr").exists()


# -- LeRobot: mixed cameras, names, kinds, tasks (issue 27) ------------------------------------------
def named_mixed_dataset(path):
    meta = make_meta(
        image_size={"front": (12, 16), "wrist": (8, 6)},
        state_names=["shoulder_pan.pos", "elbow_flex.pos", "gripper.pos"],
        robot="so101_follower",
    )
    meta.action_space.names = ["shoulder_pan.pos", "gripper.pos"]
    meta.action_space.kind = "absolute_joint_pos"
    write_dataset(path, meta=meta)
    return meta


def test_lerobot_export_writes_what_lerobot_writes(tmp_path):
    import pandas as pd

    src, out, back = tmp_path / "m.zarr", tmp_path / "lr", tmp_path / "back.zarr"
    meta = named_mixed_dataset(src)
    to_lerobot(src, out, video_codec="libx264rgb", progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    features = info["features"]
    assert features["observation.images.wrist"]["shape"] == [8, 6, 3]
    assert features["observation.images.front"]["info"]["video.height"] == 12
    assert features["observation.state"]["names"] == meta.state_names
    assert features["action"]["names"] == meta.action_space.names
    assert info["robot_type"] == "so101_follower" and info["fps"] == 10 and isinstance(info["fps"], int)
    # LeRobot reads a frame's task string from the pandas index of tasks.parquet
    tasks = pd.read_parquet(out / "meta" / "tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert tasks.loc["instruction 3", "task_index"] == sorted(f"instruction {e}" for e in range(5)).index(
        "instruction 3"
    )
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["action"]["count"] == [20] and stats["action"]["max"] == [19.0, 0.0]
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    convert(out, back, progress=False)
    got = TrajectoryStore(back).meta
    assert got.image_sizes == meta.image_sizes and got.state_names == meta.state_names
    assert got.action_space.names == meta.action_space.names and got.action_space.kind == "absolute_joint_pos"
    assert got.robot == "so101_follower"
    check_same(src, back)


def test_lerobot_pos_actions_default_to_absolute_and_fps_is_not_retimed(tmp_path, dataset):
    out = tmp_path / "lr"
    to_lerobot(dataset, out, video_codec=None, progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    del info["vla"]  # as LeRobot itself writes it: no kind, `.pos` names
    info["features"]["action"]["names"] = {"motors": ["a.pos", "b.pos"]}
    (out / "meta" / "info.json").write_text(json.dumps(info))
    from_lerobot(out, tmp_path / "a.zarr", progress=False)
    assert TrajectoryStore(tmp_path / "a.zarr").meta.action_space.kind == "absolute_joint_pos"
    assert TrajectoryStore(tmp_path / "a.zarr").meta.action_space.names == ["a.pos", "b.pos"]
    with pytest.raises(ConversionError, match="states fps 10 .* not re-timed"):
        from_lerobot(out, tmp_path / "b.zarr", fps=30, progress=False)
    assert not (tmp_path / "b.zarr").exists()


def test_cli_to_lerobot_honours_instruction_and_fps(tmp_path, dataset, capsys):
    import pandas as pd

    out = tmp_path / "lr"
    args = ["data", "convert", str(dataset), str(out), "--to", "lerobot", "--video-codec", "none"]
    assert main([*args, "--instruction", "pick up the cube", "--fps", "30"]) == 0
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["fps"] == 30 and info["total_tasks"] == 1
    assert pd.read_parquet(out / "meta" / "tasks.parquet").index.tolist() == ["pick up the cube"]
    frames = pd.read_parquet(out / "data" / "chunk-000" / "file-000.parquet")
    np.testing.assert_allclose(
        frames["timestamp"][frames["episode_index"] == 2], np.arange(7) / 30, rtol=1e-6
    )
    assert main([*args, "--overwrite", "--state-keys", "a,b"]) == 2
    assert "--state-keys" in capsys.readouterr().err


def test_mixed_camera_push_data_through_lerobot_trains_and_evaluates(tmp_path):
    """builtin/push with a 32 px top camera beside a 16 px wrist camera: LeRobot out and back in, then train
    and evaluate in the env at those sizes."""
    from envs.collect import CollectConfig, collect
    from vla.config import compose, to_object
    from vla.eval import EvalConfig, evaluate
    from vla.train import TrainConfig, train

    sizes = {"top": 32, "wrist": 16}
    collect(
        CollectConfig(
            episodes=4, out=str(tmp_path / "push.zarr"), cameras=["top", "wrist"], image_size=sizes, videos=0
        ),
        progress=False,
    )
    to_lerobot(tmp_path / "push.zarr", tmp_path / "lr", video_codec="libx264rgb", progress=False)
    convert(tmp_path / "lr", tmp_path / "back.zarr", progress=False)
    back = TrajectoryStore(tmp_path / "back.zarr")
    assert back.meta.image_sizes == {"top": (32, 32), "wrist": (16, 16)} and back.meta.env == "builtin/push"
    run = tmp_path / "run"
    ckpt = train(
        to_object(
            compose(
                "train",
                [
                    f"data.path={tmp_path / 'back.zarr'}",
                    f"out={run}",
                    "data.num_workers=0",
                    "trainer.steps=3",
                    "trainer.batch_size=4",
                    "trainer.checkpoint_every=3",
                ],
            ),
            TrainConfig,
        ),
        progress=False,
    )
    report = evaluate(
        EvalConfig(checkpoint=str(ckpt), episodes=2, out=str(tmp_path / "eval"), videos=0), progress=False
    )
    rows = report["tasks"]["builtin/push"]["results"]
    assert len(rows) == 2 and all(r["length"] > 0 for r in rows)
    # the checkpoint checks each camera: an env whose wrist camera renders at the top camera's size is refused
    import envs
    from vla.data import SchemaError
    from vla.models import load_policy

    assert load_policy(ckpt).meta.image_sizes == {"top": (32, 32), "wrist": (16, 16)}
    wrong = envs.make("builtin/push", cameras=["top", "wrist"], image_size=32).unwrapped.meta
    with pytest.raises(SchemaError, match=r"images\['wrist'\] \[32, 32\] \(H, W\) vs \[16, 16\]"):
        load_policy(ckpt, expect=wrong)
