"""Our LeRobot export read by LeRobot's own `LeRobotDataset`, and a dataset written by LeRobot's own writer
converted in, trained on and evaluated. LeRobot needs Python >= 3.12 and numpy 2, so it runs in its own venv
(`make test-lerobot` builds it and sets VLA_LEROBOT_PYTHON); tests/lerobot_side.py is its half.
Not in `make test` / CI (marker `lerobot`): the venv is a 6 GB install."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_meta, write_dataset

from vla.cli import main
from vla.data import TrajectoryStore
from vla.data.convert import to_lerobot

pytestmark = pytest.mark.lerobot
SIDE = Path(__file__).with_name("lerobot_side.py")


def lerobot(*args: str) -> None:
    python = os.environ.get("VLA_LEROBOT_PYTHON")
    if not python or not Path(python).exists():
        pytest.fail("set VLA_LEROBOT_PYTHON to the LeRobot venv's python (`make test-lerobot` does)")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([python, str(SIDE), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def read_with_lerobot(root: Path, tmp_path: Path) -> tuple[dict, dict]:
    out = tmp_path / f"{root.name}-read.npz"
    lerobot("read", str(root), str(out))
    data = dict(np.load(out))
    return data, json.loads(str(data.pop("meta")))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("codec", ["libx264rgb", "libsvtav1"])
def test_our_export_reads_back_in_lerobots_loader_frame_for_frame(tmp_path, codec):
    meta = make_meta(
        image_size={"front": (32, 48), "wrist": (16, 16)},
        state_names=["shoulder_pan.pos", "elbow_flex.pos", "gripper.pos"],
        robot="so101_follower",
    )
    meta.action_space.names = ["shoulder_pan.pos", "gripper.pos"]
    src = tmp_path / "ours.zarr"
    write_dataset(src, lengths=(5, 3, 7, 1, 4), meta=meta)
    to_lerobot(src, tmp_path / "export", video_codec=codec, progress=False)
    got, info = read_with_lerobot(tmp_path / "export", tmp_path)
    store = TrajectoryStore(src)
    assert info["num_episodes"] == 5 and info["fps"] == 10 and info["robot_type"] == "so101_follower"
    assert info["features"]["observation.state"]["names"] == meta.state_names
    assert info["features"]["action"]["names"] == meta.action_space.names
    episode_of = np.repeat(np.arange(5), store.episode_lengths)
    np.testing.assert_array_equal(got["episode_index"], episode_of)
    np.testing.assert_array_equal(got["state"], store.load("state"))
    np.testing.assert_array_equal(got["action"], store.load("action"))
    assert info["tasks"] == [str(store.instructions[e]) for e in episode_of]  # strings, not task indices
    for cam in meta.cameras:
        ours, theirs = store.load(f"images/{cam}"), got[f"images/observation.images.{cam}"]
        assert theirs.shape == ours.shape
        if codec == "libx264rgb":
            np.testing.assert_array_equal(theirs, ours, err_msg=cam)
        else:
            assert psnr(theirs, ours) > 25, (cam, psnr(theirs, ours))


def test_a_dataset_lerobot_writes_with_mixed_cameras_converts_trains_evaluates_and_goes_back(tmp_path):
    from envs.collect import CollectConfig, collect
    from vla.eval import EvalConfig, evaluate

    collect(
        CollectConfig(
            episodes=3,
            out=str(tmp_path / "push.zarr"),
            cameras=["top", "wrist"],
            image_size={"top": 96, "wrist": 48},
            videos=0,
        ),
        progress=False,
    )
    push = TrajectoryStore(tmp_path / "push.zarr")
    state_names, action_names = ["x", "y", "vx", "vy"], ["vx", "vy"]
    features = {
        "observation.images.top": {
            "dtype": "video",
            "shape": [96, 96, 3],
            "names": ["height", "width", "channels"],
        },
        "observation.images.wrist": {
            "dtype": "image",
            "shape": [48, 48, 3],
            "names": ["height", "width", "channels"],
        },
        "observation.state": {"dtype": "float32", "shape": [4], "names": state_names},
        "action": {"dtype": "float32", "shape": [2], "names": action_names},
    }
    spec = {
        "fps": 10,
        "robot_type": "point_pusher",
        "features": features,
        "tasks": push.instructions.tolist(),
    }
    np.savez(
        tmp_path / "spec.npz",
        spec=json.dumps(spec),
        episode_ends=push.episode_ends,
        **{
            "observation.images.top": push.load("images/top"),
            "observation.images.wrist": push.load("images/wrist"),
        },
        **{"observation.state": push.load("state"), "action": push.load("action")},
    )
    lerobot("write", str(tmp_path / "spec.npz"), str(tmp_path / "by-lerobot"))

    assert main(["data", "convert", str(tmp_path / "by-lerobot"), str(tmp_path / "in.zarr")]) == 0
    back = TrajectoryStore(tmp_path / "in.zarr")
    assert back.meta.image_sizes == {"top": (96, 96), "wrist": (48, 48)}
    assert back.meta.state_names == state_names and back.meta.action_space.names == action_names
    assert back.meta.robot == "point_pusher" and back.meta.fps == 10
    assert back.episode_ends.tolist() == push.episode_ends.tolist()
    assert back.instructions.tolist() == push.instructions.tolist()
    np.testing.assert_array_equal(back.load("state"), push.load("state"))
    np.testing.assert_array_equal(back.load("action"), push.load("action"))
    np.testing.assert_array_equal(back.load("images/wrist"), push.load("images/wrist"))  # PNG: lossless
    assert psnr(back.load("images/top"), push.load("images/top")) > 30  # LeRobot's default video codec

    # ... trains and evaluates in builtin/push at those camera sizes
    run = tmp_path / "run"
    assert main(
        ["train", f"data.path={tmp_path / 'in.zarr'}", f"out={run}", "data.num_workers=0", "trainer.steps=3",
         "trainer.batch_size=4", "trainer.checkpoint_every=3"]
    ) == 0  # fmt: skip
    report = evaluate(
        EvalConfig(
            checkpoint=str(run / "checkpoints" / "step_000003"),
            env="builtin/push",
            episodes=2,
            out=str(tmp_path / "eval"),
            videos=0,
        ),
        progress=False,
    )
    assert [r["seed"] for r in report["tasks"]["builtin/push"]["results"]] == [0, 1]

    # ... and goes back out: LeRobot reads LeRobot's names, fps, robot type and tasks again
    to_lerobot(tmp_path / "in.zarr", tmp_path / "again", video_codec="libx264rgb", progress=False)
    got, info = read_with_lerobot(tmp_path / "again", tmp_path)
    assert info["features"]["observation.state"]["names"] == state_names
    assert info["features"]["action"]["names"] == action_names
    assert info["robot_type"] == "point_pusher" and info["fps"] == 10
    assert info["tasks"] == [str(back.instructions[e]) for e in got["episode_index"]]
    np.testing.assert_array_equal(got["images/observation.images.wrist"], back.load("images/wrist"))


def test_peer_latency_times_lerobots_act_and_ours_in_one_run():
    import sys

    python = os.environ.get("VLA_LEROBOT_PYTHON")
    if not python:
        pytest.fail("set VLA_LEROBOT_PYTHON to the LeRobot venv's python (`make test-lerobot` does)")
    root = Path(__file__).resolve().parent.parent
    args = ["repeats=2", f"lerobot_python={python}", "vision_dtypes=[float32]", "encoder_sizes=[64]"]
    args.append("compile=[false]")
    script = root / "benchmarks" / "peer_latency.py"
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=900, cwd=root
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["act"]["policy"].startswith("LeRobot ACT") and result["act"]["chunk_shape"] == [1, 100, 2]
    assert result["act"]["params_m"] > 40 and result["act"]["median_ms"] > 0  # ResNet-18 + transformer
    (row,) = result["ours"]
    assert row["vision_dtype_resolved"] == "float32" and row["median_ms"] > 0
    assert row["encoder_size"] == 64 and row["compiled"] is False
    assert row["ratio_to_act"] == round(row["median_ms"] / result["act"]["median_ms"], 3)


# -- a real LeRobot robot class, driven by the robot-side package against a real server -------------------
SO101_MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


def so101_checkpoint(path: Path) -> str:
    """A woken random policy for an SO-101 (LeRobot's motor names, absolute joint targets in degrees and a
    0..100 gripper, one 48x64 camera, 30 fps), with a normalizer that spreads its actions over the range."""
    import torch
    from conftest import wake

    from vla.data import Normalizer
    from vla.data.schema import ActionSpace, DatasetMeta
    from vla.models import Policy, PolicyConfig, save_policy

    names = [f"{m}.pos" for m in SO101_MOTORS]
    meta = DatasetMeta(
        fps=30,
        cameras=["front"],
        image_size=(48, 64),
        state_dim=6,
        action_space=ActionSpace(6, [-90] * 5 + [0], [90] * 5 + [100], "absolute_joint_pos", names),
        robot="so101_follower",
        state_names=names,
    )
    stats = {"mean": np.full(6, 45.0), "std": np.full(6, 40.0)}  # state and actions of tens of degrees
    normalizer = Normalizer.from_stats(
        {"state": stats, "action": stats}, {"state": "mean_std", "action": "mean_std"}
    )
    torch.manual_seed(0)
    save_policy(wake(Policy(PolicyConfig(), meta, normalizer)).eval(), path)
    return str(path)


def test_lerobots_so101_follower_runs_the_served_policy_through_the_safety_layer(tmp_path):
    """LeRobot's own `SO101Follower` (its Feetech bus over an emulated serial line, a camera serving image
    files) in LeRobot's venv, driven by `vla_client` against `vla serve`: every goal position the servos
    receive is the served action after the safety layer, and no goal is further than the step limit from
    where the servo was."""
    import imageio.v3 as iio

    from vla.serve import ServerProcess

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # 60x80 frames: the adapter resizes them to the policy's 48x64
        iio.imwrite(frames / f"{i:03d}.png", rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    server = ServerProcess(so101_checkpoint(tmp_path / "ckpt"))
    try:
        out = tmp_path / "robot.json"
        python = os.environ.get("VLA_LEROBOT_PYTHON")
        side = SIDE.with_name("lerobot_robot_side.py")
        proc = subprocess.run(
            [python, str(side), server.url, str(frames), str(tmp_path), str(out)],
            capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
    finally:
        server.kill()
    got = json.loads(out.read_text())
    assert got["python"].startswith("3.12") and got["numpy"].startswith("2.")  # the thin package on numpy 2
    assert got["steps"] == 24 and got["rate_hz"] == 30  # the policy's fps, not a default
    assert got["state_keys"] == [f"{m}.pos" for m in SO101_MOTORS]
    goals, before = np.asarray(got["goals"]), np.asarray(got["before"])
    actions = np.asarray(got["actions"])
    assert goals.shape == actions.shape == (24, 6)
    # one servo tick is 360/4095 degrees (0.088) on the joints and 100/2048 (0.049) on the gripper
    resolution = np.array([360 / 4095] * 5 + [100 / 2048])
    assert (np.abs(goals - actions) <= resolution).all(), np.abs(goals - actions).max(0)
    # the default limit: a tenth of the action range per tick (18 degrees, 10 on the gripper)
    limit = np.array([18.0] * 5 + [10.0])
    assert (np.abs(goals - before) <= limit + 2 * resolution).all(), np.abs(goals - before).max(0)
    # the arm started with its shoulder at 84 degrees: the first commands walk it, limited, not a jump
    assert got["start"][0] > 80 and got["limited"] > 0
    assert abs(goals[0, 0] - got["start"][0]) == pytest.approx(18.0, abs=2 * resolution[0])
    assert got["sources"].count("policy") >= 20
    assert got["torque_after_close"] == [0] * 6  # LeRobot's disconnect: torque off


# -- LeRobot's own trainer and policy on our demos, evaluated through our protocol -------------------------
def test_act_trained_by_lerobot_is_served_and_evaluated_through_our_protocol(tmp_path):
    """benchmarks/lerobot_act_compare.py end to end on the builtin experiment's smoke demos: export, a
    lerobot-train run stopped at its budget, LeRobot's policy served by _lerobot_act_server.py, `vla eval
    url=`. Then that server answers a bad request with an error and keeps serving; its chunks follow the
    state."""
    import socket
    import sys

    from vla_client import RobotClient, ServerError

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import lerobot_act_compare as compare

    python = os.environ.get("VLA_LEROBOT_PYTHON")
    if not python:
        pytest.fail("set VLA_LEROBOT_PYTHON to the LeRobot venv's python (`make test-lerobot` does)")
    root = Path(__file__).resolve().parent.parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [
        "compare_with=builtin",
        "task=builtin/push",
        "smoke=true",
        "budget_s=60",
        "save_every=4",
        "batch_size=2",
        "episodes=2",
        f"port={port}",
        f"lerobot_python={python}",
        f"out={tmp_path}",
    ]
    script = root / "benchmarks" / "lerobot_act_compare.py"
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=900, cwd=root
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    act = result["act"]
    assert act["steps"] >= 4 and act["steps"] % 4 == 0 and 0 < act["checkpoint_at_s"] <= act["train_wall_s"]
    assert act["train_wall_s"] >= 60 and act["samples_per_s"] == round(
        act["steps"] * 2 / act["checkpoint_at_s"], 1
    )
    assert act["episodes"] == 2 and act["latency_ms"]["median"] > 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["policy"] == "server" and report["config"]["seed"] == 100000
    assert report["config"]["execute_steps"] == 1  # the builtin experiment's main evaluation
    assert (
        result["ours"]["successes"] == 98 and result["ours"]["train_wall_s"] == 717.4
    )  # docs/results/builtin

    server = subprocess.Popen(
        [
            python,
            str(root / "benchmarks" / "_lerobot_act_server.py"),
            act["checkpoint"],
            "--env=builtin/push",
            f"--port={port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert compare.wait_ready(server) is not None
        with RobotClient(f"ws://127.0.0.1:{port}", timeout_s=30) as client:
            md = client.connect()
            assert md["cameras"] == ["top"] and md["image_size"] == [64, 64] and md["action_horizon"] == 20
            image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            bad = {"images": {"top": image}, "state": np.zeros(3, np.float32), "instruction": "push"}
            with pytest.raises(ServerError, match=r"state: expected float32 \(4,\)"):
                client.infer(bad)
            chunks = [client.infer({**bad, "state": np.full(4, v, np.float32)}).actions for v in (-1.0, 1.0)]
            assert chunks[0].shape == (20, 2) and np.isfinite(chunks[0]).all()
            assert not np.allclose(chunks[0], chunks[1])  # the state reaches LeRobot's policy
    finally:
        server.terminate()
        server.wait(30)
