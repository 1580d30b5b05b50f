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
    assert isinstance(make_executor("receding", 8), RecedingHorizon) and make_executor("receding", 8).execute == 4
    assert isinstance(make_executor("ensemble", 8), TemporalEnsemble)
    with pytest.raises(ValueError, match="unknown chunk execution strategy 'rtc'"):
        make_executor("rtc", 8)
