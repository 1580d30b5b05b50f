"""Recording deployments: `vla robot record=...` writes every episode (observations, executed actions, who
chose each one, timestamps, the simulator's success label) to a dataset that validates and trains; a scripted
operator's takeover is marked as such, and the policy resumes after it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla.cli import main
from vla.data import TrajectoryStore, validate
from vla.data.schema import SchemaError
from vla.serve import ServerProcess


@pytest.fixture(scope="module")
def server(random_checkpoint):
    srv = ServerProcess(random_checkpoint)
    yield srv
    srv.kill()


def test_a_recorded_deployment_with_a_takeover_validates_and_trains(server, tmp_path, capsys):
    data, out = tmp_path / "deploy.zarr", tmp_path / "run"
    args = [f"url={server.url}", "max_steps=25", f"record={data}", f"out={out}", "operator=expert"]
    assert main(["robot", *args, "episodes=2", "takeover=[5,12]"]) == 0
    summary = json.loads((out / "control.json").read_text())
    assert summary["recorded"] == {"dataset": str(data), "episodes": 2}
    store = TrajectoryStore(data)
    assert store.num_episodes == 2 and list(store.episode_lengths) == [25, 25]
    assert store.meta.source_names == ["policy", "hold", "operator"]
    for e in range(2):
        episode = store.episode(e)
        sources = [store.meta.source_names[c] for c in episode["source"]]
        assert sources == summary["sources"][e]  # what the loop did, step by step
        assert sources[5:12] == ["operator"] * 7 and "operator" not in sources[:5] + sources[12:]
        assert sources.count("policy") >= 15  # the policy drove before and after the takeover
        np.testing.assert_allclose(episode["action"], summary["actions"][e], atol=1e-6)
        # the expert's actions are not the random policy's: the takeover is in the data, not only in a label
        assert np.abs(episode["action"][5:12] - episode["action"][:5].mean(0)).max() > 0.1
        assert np.all(np.diff(episode["timestamp"]) > 0) and episode["timestamp"][-1] < 10
        assert episode["success"] == summary["per_episode"][e]["success"]
        assert episode["instruction"]  # the robot's instruction, per episode
    assert store.seeds.tolist() == [0, 1]
    assert validate(data).ok

    # a second run appends to the same dataset (crash-safe appends, as `vla collect`)
    assert main(["robot", f"url={server.url}", "max_steps=5", f"record={data}", "seed=7"]) == 0
    assert TrajectoryStore(data).num_episodes == 3
    # a plain dataset is not silently turned into a recorded one
    collected = tmp_path / "collected.zarr"
    assert (
        main(
            [
                "collect",
                "env=builtin/push",
                "episodes=1",
                "cameras=[top]",
                "image_size=64",
                f"out={collected}",
            ]
        )
        == 0
    )
    assert main(["robot", f"url={server.url}", "max_steps=5", f"record={collected}"]) != 0
    assert "not a recorded deployment" in capsys.readouterr().err

    run = tmp_path / "train"
    assert main(
        ["train", f"data.path={data}", f"out={run}", "data.num_workers=0", "trainer.steps=2",
         "trainer.batch_size=4", "trainer.checkpoint_every=2"]
    ) == 0  # fmt: skip
    assert (run / "checkpoints" / "step_000002").is_dir()


def test_the_writer_checks_sources_and_timestamps(tmp_path):
    from conftest import make_episode, make_meta

    from vla.data.writer import TrajectoryWriter

    meta = make_meta()
    meta.extra["sources"] = ["policy", "hold", "operator"]
    episode = make_episode(0, 4, 0, meta)
    with TrajectoryWriter(tmp_path / "d.zarr", meta) as writer:
        with pytest.raises(SchemaError, match="lacks them"):
            writer.add_episode(**episode)
        with pytest.raises(SchemaError, match="codes 0..2"):
            writer.add_episode(**episode, source=np.array([0, 1, 3, 0]), timestamp=np.arange(4.0))
        with pytest.raises(SchemaError, match="one per frame"):
            writer.add_episode(**episode, source=np.zeros(3, int), timestamp=np.arange(4.0))
        writer.add_episode(**episode, source=np.array([0, 1, 2, 0]), timestamp=np.arange(4.0))
    got = TrajectoryStore(tmp_path / "d.zarr").episode(0)
    assert got["source"].tolist() == [0, 1, 2, 0] and got["timestamp"].tolist() == [0, 1, 2, 3]
