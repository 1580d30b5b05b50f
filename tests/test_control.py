"""Chunk execution strategies on synthetic chunk streams."""

import numpy as np
import pytest

from vla.control import RecedingHorizon, TemporalEnsemble, make_executor


def chunk_at(t, horizon=8):
    """A chunk predicted at step t of the ideal trajectory a(s) = s: entries t, t+1, ..."""
    return np.arange(t, t + horizon, dtype=np.float32)[:, None]


def run(executor, steps=30):
    actions, requests = [], []
    for t in range(steps):
        if executor.needs_chunk(t):
            executor.add_chunk(chunk_at(t), t)
            requests.append(t)
        actions.append(float(executor.action(t)[0]))
    return actions, requests


def test_receding_horizon_replans_every_n_and_is_continuous():
    actions, requests = run(RecedingHorizon(execute=3))
    assert requests == list(range(0, 30, 3))
    assert actions == list(range(30))  # continuous across chunk boundaries on a consistent stream


def test_receding_horizon_holds_the_last_action_past_the_chunk():
    ex = RecedingHorizon(execute=10)
    ex.add_chunk(chunk_at(0, horizon=4), 0)
    assert not ex.needs_chunk(3) and ex.needs_chunk(4)
    assert float(ex.action(5)[0]) == 3.0


def test_temporal_ensemble_averages_overlapping_chunks():
    actions, requests = run(TemporalEnsemble(execute=1, decay=0.0))
    assert requests == list(range(30)) and actions == list(range(30))
    ex = TemporalEnsemble(execute=1, decay=0.0)
    ex.add_chunk(np.zeros((4, 1)), 0)
    ex.add_chunk(np.ones((4, 1)), 1)
    assert float(ex.action(1)[0]) == pytest.approx(0.5)  # both chunks cover step 1
    ex.add_chunk(2 * np.ones((4, 1)), 4)
    assert float(ex.action(4)[0]) == pytest.approx((1 + 2) / 2)  # the chunk from step 0 expired


def test_temporal_ensemble_weights_older_chunks_more():
    ex = TemporalEnsemble(execute=1, decay=1.0)
    ex.add_chunk(np.zeros((4, 1)), 0)
    ex.add_chunk(np.ones((4, 1)), 1)
    w = np.exp(-np.arange(2))
    assert float(ex.action(1)[0]) == pytest.approx(w[1] / w.sum())


def test_ensemble_smooths_a_noisy_stream_at_boundaries():
    rng = np.random.default_rng(0)
    ex, rh = TemporalEnsemble(execute=1), RecedingHorizon(execute=4)
    jumps = {}
    for name, executor in (("ensemble", ex), ("receding", rh)):
        actions = []
        for t in range(60):
            if executor.needs_chunk(t):
                executor.add_chunk(chunk_at(t) + rng.normal(0, 1.0, (8, 1)), t)
            actions.append(float(executor.action(t)[0]))
        jumps[name] = np.abs(np.diff(actions) - 1).mean()
    assert jumps["ensemble"] < jumps["receding"]


def test_make_executor():
    assert (
        isinstance(make_executor("receding", 8), RecedingHorizon)
        and make_executor("receding", 8).execute == 4
    )
    assert isinstance(make_executor("ensemble", 8), TemporalEnsemble)
    assert make_executor("rtc", 8, delay=2).delay == 2
    with pytest.raises(ValueError, match="unknown chunk execution strategy 'bidirectional'"):
        make_executor("bidirectional", 8)


def test_rtc_executor_keeps_the_old_chunk_during_the_delay_and_guides_the_overlap():
    from vla.control import RealTimeChunking

    ex = RealTimeChunking(execute=4, delay=2)
    assert ex.needs_chunk(0) and ex.guide(0, 8) is None
    ex.add_chunk(chunk_at(0), 0)  # the first chunk is used at once
    assert [float(ex.action(t)[0]) for t in range(4)] == [0, 1, 2, 3]
    assert ex.needs_chunk(4)
    guide, weights = ex.guide(4, 8)
    assert guide[:, 0].tolist() == [4, 5, 6, 7, 7, 7, 7, 7]  # the old plan from step 4, padded
    assert weights[:2].tolist() == [1, 1] and (np.diff(weights[2:4]) < 0).all() and (weights[4:] == 0).all()
    ex.add_chunk(100 + chunk_at(4), 4)
    assert not ex.needs_chunk(5)  # the answer is pending
    assert [float(ex.action(t)[0]) for t in (4, 5)] == [4, 5]  # old chunk during the delay
    assert float(ex.action(6)[0]) == 106  # new chunk from step 6, aligned to its request step 4
    with pytest.raises(ValueError, match="delay <= execute"):
        RealTimeChunking(execute=2, delay=3)
