import json

import numpy as np
import pytest
import torch
from conftest import make_episode, make_meta

from vla.data import Normalizer, TrajectoryStore, TrajectoryWriter, compute_stats, ensure_stats
from vla.data.normalizer import MODES
from vla.data.stats import write_stats
from vla.data.store import open_group


def test_stats_match_numpy_and_are_stored_once(dataset):
    store = TrajectoryStore(dataset)
    assert store.stats() is None
    stats = ensure_stats(dataset)
    state = store.load("state").astype(np.float64)
    np.testing.assert_allclose(stats["state"]["mean"], state.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["state"]["std"], state.std(0), rtol=1e-6)
    np.testing.assert_allclose(
        stats["action"]["q99"], np.quantile(store.load("action"), 0.99, axis=0), rtol=1e-5
    )
    assert stats["action"]["min"].tolist() == [0, -6] and stats["action"]["max"].tolist() == [19, 0]
    stored = TrajectoryStore(dataset).stats()  # read back from the dataset
    for key in stats:
        for name in stats[key]:
            np.testing.assert_array_equal(stored[key][name], stats[key][name])
    with TrajectoryWriter(dataset) as w:  # appending makes them stale, not wrong
        w.add_episode(**make_episode(5, 2, 20))
    with pytest.warns(UserWarning, match="stats cover 20 frames"):
        assert TrajectoryStore(dataset).stats() is None
    assert ensure_stats(dataset, recompute=True)["action"]["max"][0] == 21


def test_stats_cover_targets_and_older_stats_without_them_are_recomputed(tmp_path):
    meta = make_meta(extra={"targets": ["block_x", "block_y"]})
    with TrajectoryWriter(tmp_path / "t.zarr", meta) as w:
        ep = make_episode(0, 10, 0, meta)
        ep["targets"] = np.stack([np.linspace(0, 1, 10), np.full(10, 0.5)], 1).astype(np.float32)
        w.add_episode(**ep)
    store = TrajectoryStore(tmp_path / "t.zarr")
    # stats written before targets had stats (state and action only) are completed, not trusted
    write_stats(
        open_group(store.url, mode="r+"), compute_stats(store, keys=("state", "action")), store.num_frames
    )
    assert "targets" not in TrajectoryStore(tmp_path / "t.zarr").stats()
    stats = ensure_stats(tmp_path / "t.zarr")
    np.testing.assert_allclose(stats["targets"]["mean"], [0.5, 0.5], rtol=1e-6)
    assert (
        stats["targets"]["min"].tolist() == [0, 0.5]
        and "targets" in TrajectoryStore(tmp_path / "t.zarr").stats()
    )


def constant_dim_stats(tmp_path):
    meta = make_meta()
    with TrajectoryWriter(tmp_path / "c.zarr", meta) as w:
        ep = make_episode(0, 10, 0, meta)
        ep["state"][:, 2] = 0.25  # a constant dimension (e.g. a locked joint)
        w.add_episode(**ep)
    return compute_stats(TrajectoryStore(tmp_path / "c.zarr"))


@pytest.mark.parametrize("mode", MODES)
def test_normalizer_modes_round_trip_and_constant_dims(tmp_path, mode):
    stats = constant_dim_stats(tmp_path)
    norm = Normalizer.from_stats(stats, {"state": mode, "action": mode})
    x = TrajectoryStore(tmp_path / "c.zarr").load("state")
    y = norm.normalize("state", x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(norm.unnormalize("state", y), x, rtol=1e-5, atol=1e-5)
    if mode != "identity":
        np.testing.assert_allclose(y[:, 1:], 0.0, atol=1e-6)  # constant dims -> 0, no division by ~0
    if mode == "min_max":
        assert y[:, :2].min() == pytest.approx(-1) and y[:, :2].max() == pytest.approx(1)
    if mode == "mean_std":
        np.testing.assert_allclose(y[:, 0].mean(), 0, atol=1e-5)
        np.testing.assert_allclose(y[:, 0].std(), 1, atol=1e-4)
    if mode == "identity":
        np.testing.assert_array_equal(y, x)
    if mode == "quantile":  # [q01, q99] -> [-1, 1]; outliers land beyond it, unclipped
        q01, q99 = stats["state"]["q01"][0], stats["state"]["q99"][0]
        probe = np.repeat(x[:1], 4, axis=0)
        probe[:, 0] = [q01, q99, (q01 + q99) / 2, q99 + 2 * (q99 - q01)]
        np.testing.assert_allclose(norm.normalize("state", probe)[:, 0], [-1, 1, 0, 5], atol=1e-5)


def test_normalizer_json_and_torch(tmp_path):
    stats = constant_dim_stats(tmp_path)
    norm = Normalizer.from_stats(stats, {"state": "quantile", "action": "mean_std"})
    path = tmp_path / "norm_stats.json"
    norm.save(path)
    json.loads(path.read_text())  # plain JSON
    back = Normalizer.load(path)
    x = np.random.default_rng(0).normal(size=(4, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(back.normalize("action", x), norm.normalize("action", x))
    t = torch.from_numpy(x).to(torch.bfloat16)
    out = back.normalize("action", t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and out.shape == (4, 6, 2)
    np.testing.assert_allclose(out.float().numpy(), norm.normalize("action", x), rtol=2e-2, atol=2e-2)


def test_normalizer_errors(tmp_path):
    stats = constant_dim_stats(tmp_path)
    with pytest.raises(ValueError, match="unknown normalization mode 'zscore'"):
        Normalizer.from_stats(stats, {"state": "zscore"})
    with pytest.raises(KeyError, match="no stats for keys \\['images'\\]"):
        Normalizer.from_stats(stats, {"images": "mean_std"})
    norm = Normalizer.from_stats(stats, {"state": "mean_std"})
    with pytest.raises(ValueError, match="state has last dim 5, normalizer expects 3"):
        norm.normalize("state", np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="malformed normalizer dict"):
        Normalizer.from_dict({"state": {}})


def test_identity_normalizer_changes_nothing():
    norm = Normalizer.identity({"state": 3, "action": 2})
    x = np.array([[1.5, -2.0, 7.0]], np.float32)
    np.testing.assert_array_equal(norm.normalize("state", x), x)
    np.testing.assert_array_equal(norm.unnormalize("action", x[:, :2]), x[:, :2])
    assert Normalizer.from_dict(norm.to_dict()).keys["action"].mode == "identity"
