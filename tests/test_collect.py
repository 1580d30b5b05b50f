"""`vla collect`: expert demos into valid datasets, videos, parallel workers, resume after a kill."""

import os
import signal
import subprocess
import sys
import time
import warnings

import imageio.v3 as iio
import numpy as np
import pytest

from envs.collect import CollectConfig, collect
from vla.cli import main
from vla.data import PartialTailWarning, TrajectoryStore, validate


def test_collect_builtin(tmp_path):
    out = str(tmp_path / "push.zarr")
    summary = collect(
        CollectConfig(env="builtin/push", episodes=12, out=out, cameras=["top", "wrist"], videos=2),
        progress=False,
    )
    assert summary["added"] == 12 and summary["expert_success_rate"] == 1.0
    store = TrajectoryStore(out)
    assert store.num_episodes == 12 and store.success.all()
    assert store.meta.cameras == ["top", "wrist"] and store.meta.env == "builtin/push"
    assert store.seeds.tolist() == list(range(12))
    assert all(i.startswith("push the ") for i in store.instructions)
    assert validate(out).ok and not validate(out).warnings
    video = iio.imread(summary["videos"][0])
    # both cameras side by side
    assert video.shape[0] == store.episode_lengths[0] and video.shape[2] >= 2 * 64


def test_noise_std_executes_noisy_actions_and_records_the_clean_ones(tmp_path, monkeypatch):
    import envs.experts

    labels, executed = [], []
    add_noise = envs.experts.add_noise

    def recording(label, std, rng, low, high):
        noisy = add_noise(label, std, rng, low, high)
        labels.append(np.array(label)), executed.append(np.array(noisy))
        return noisy

    monkeypatch.setattr(envs.experts, "add_noise", recording)
    noisy, clean = str(tmp_path / "noisy.zarr"), str(tmp_path / "clean.zarr")
    collect(
        CollectConfig(episodes=2, out=noisy, videos=0, noise_std=0.2, keep="all", image_size=16),
        progress=False,
    )
    store = TrajectoryStore(noisy)
    np.testing.assert_array_equal(store.load("action"), np.stack(labels))  # the expert's labels
    moved = np.abs(np.stack(executed) - np.stack(labels)).max(1)
    assert (moved > 1e-3).mean() > 0.9  # ...while nearly every executed action was perturbed
    collect(CollectConfig(episodes=2, out=clean, videos=0, keep="all", image_size=16), progress=False)
    first = store.episode(0)["state"]
    again = TrajectoryStore(clean).episode(0)["state"]
    n = min(len(first), len(again))
    assert np.abs(first[:n] - again[:n]).max() > 1e-3  # the noise was executed: other states, same seed


def test_workers_give_the_same_dataset(tmp_path):
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    collect(CollectConfig(episodes=6, out=a, videos=0), progress=False)
    collect(CollectConfig(episodes=6, out=b, videos=0, workers=2), progress=False)
    sa, sb = TrajectoryStore(a), TrajectoryStore(b)
    np.testing.assert_array_equal(sa.load("action"), sb.load("action"))
    np.testing.assert_array_equal(sa.load("images/top"), sb.load("images/top"))


def test_keep_all_marks_failures(tmp_path):
    out = str(tmp_path / "noisy.zarr")
    # max_steps=3 is too short to finish a push: every episode fails
    summary = collect(CollectConfig(episodes=4, out=out, keep="all", max_steps=3, videos=1), progress=False)
    store = TrajectoryStore(out)
    assert store.num_episodes == 4 and not store.success.any() and summary["expert_success_rate"] == 0.0
    assert "failure" in summary["videos"][0]
    with pytest.raises(RuntimeError, match="succeeded in 0/"):
        collect(
            CollectConfig(episodes=2, out=str(tmp_path / "x.zarr"), max_steps=3, max_attempts=3, videos=0),
            progress=False,
        )


def test_killed_collection_resumes_to_the_same_dataset(tmp_path):
    reference = str(tmp_path / "ref.zarr")
    collect(CollectConfig(episodes=40, out=reference, videos=0), progress=False)
    out = str(tmp_path / "killed.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vla.cli", "collect", "episodes=40", f"out={out}", "videos=0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once some, but not all, episodes are in
        time.sleep(0.05)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if 5 <= TrajectoryStore(out).num_episodes < 40:
                    break
        except (FileNotFoundError, KeyError, ValueError):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialTailWarning)
        done_before = TrajectoryStore(out).num_episodes
        assert 5 <= done_before < 40
        summary = collect(CollectConfig(episodes=40, out=out, videos=0), progress=False)
    assert summary["resumed_from_episode"] == done_before and summary["episodes"] == 40
    a, b = TrajectoryStore(reference), TrajectoryStore(out)
    assert b.seeds.tolist() == list(range(40))
    np.testing.assert_array_equal(a.load("state"), b.load("state"))
    assert a.instructions.tolist() == b.instructions.tolist()
    assert validate(out).ok


def test_cli_collect_and_errors(tmp_path, capsys):
    out = str(tmp_path / "reach.zarr")
    assert main(["collect", "env=builtin/reach", "episodes=3", f"out={out}", "videos=0"]) == 0
    assert '"episodes": 3' in capsys.readouterr().out
    assert main(["collect", "env=builtin/push", "episodes=3", f"out={out}"]) == 2  # another env's dataset
    assert "was collected from 'builtin/reach'" in capsys.readouterr().err
    assert main(["collect", "env=nope/x", f"out={tmp_path / 'n.zarr'}"]) == 2
    assert "unknown environment 'nope/x'" in capsys.readouterr().err
    assert main(["collect", "--list-envs"]) == 0
    assert "robosuite/LiftColor" in capsys.readouterr().out


@pytest.mark.slow
def test_collect_robosuite_lift_with_images(tmp_path):
    out = str(tmp_path / "lift.zarr")
    summary = collect(
        CollectConfig(env="robosuite/Lift", episodes=3, out=out, image_size=64, videos=1), progress=False
    )
    assert summary["expert_success_rate"] == 1.0
    store = TrajectoryStore(out)
    assert store.meta.cameras == ["agentview", "robot0_eye_in_hand"] and store.meta.image_size == (64, 64)
    report = validate(out)
    assert report.ok and not report.warnings, report.findings
    assert store.load("images/agentview").std() > 5
