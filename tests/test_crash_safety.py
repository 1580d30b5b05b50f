"""A writer killed with SIGKILL mid-episode loses no committed episode; the next open drops the partial
tail."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode

from vla.data import PartialTailWarning, TrajectoryStore, TrajectoryWriter, validate

TESTS = Path(__file__).parent

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import make_episode, make_meta
    from vla.data import TrajectoryWriter
    from vla.data import writer as W

    url, phase, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    original = W.TrajectoryWriter._append_rows

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def append_rows(self, path, start, rows):
        dying = self.num_episodes == kill_at
        if dying and phase == "resized:" + path:  # grown, value never written
            arr = self.group[path]
            arr.resize((start + len(rows), *arr.shape[1:]))
            die()
        original(self, path, start, rows)
        if dying and phase == "written:" + path:
            die()

    W.TrajectoryWriter._append_rows = append_rows
    meta = make_meta()
    w = TrajectoryWriter(url, meta)
    start = 0
    for e, n in enumerate([6, 5, 40, 7]):
        w.add_episode(**make_episode(e, n, start, meta))
        start += n
    print("no kill happened")
    """
)


def check_committed(url, n_episodes, lengths=(6, 5, 40, 7)):
    with pytest.warns(PartialTailWarning, match=f"{n_episodes} committed episodes are intact"):
        store = TrajectoryStore(url)
    assert store.num_episodes == n_episodes
    start = 0
    for e in range(n_episodes):
        expected = make_episode(e, lengths[e], start)
        got = store.episode(e)
        np.testing.assert_array_equal(got["images"]["front"], expected["images"]["front"])
        np.testing.assert_array_equal(got["images"]["wrist"], expected["images"]["wrist"])
        np.testing.assert_array_equal(got["state"], expected["state"])
        np.testing.assert_array_equal(got["action"], expected["action"])
        assert got["instruction"] == expected["instruction"]
        start += lengths[e]
    return start


@pytest.mark.parametrize(
    "phase",
    [
        "resized:data/images/front",  # died growing the first frame array
        "written:data/images/wrist",  # images written, state/action not
        "written:data/action",  # all frames written, no per-episode rows
        "written:meta/instruction",  # some per-episode rows
        "resized:meta/episode_ends",  # the commit point grown but its value never written
    ],
)
def test_sigkill_mid_episode_keeps_committed_episodes(tmp_path, phase):
    url = str(tmp_path / "crash.zarr")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS)), url, phase, "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    frames = check_committed(url, 2)

    report = validate(url)
    assert report.ok and report.warnings  # the tail is reported, not an error

    # zarr's LocalStore writes a chunk to `<name>.<uuid>.partial`, then renames it: a kill leaves one
    leftover = Path(url) / "data" / "state" / "c" / "0.0f3c2a9d.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"\x00" * 10)
    # Reopening for writing drops the tail, says so, and appends cleanly after it.
    with pytest.warns(PartialTailWarning, match="dropped a partial tail"):
        writer = TrajectoryWriter(url)
    assert writer.num_episodes == 2 and writer.num_frames == frames
    writer.add_episode(**make_episode(2, 40, frames))
    store = TrajectoryStore(url)
    assert store.episode_lengths.tolist() == [6, 5, 40]
    np.testing.assert_array_equal(store.episode(2)["state"][:, 0], np.arange(frames, frames + 40))
    assert validate(url).ok and not validate(url).warnings
    assert not leftover.exists() and not list(Path(url).rglob("*.partial"))


LOOP_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import make_episode, make_meta
    from vla.data import TrajectoryWriter
    meta = make_meta(image_size=(64, 64))
    w = TrajectoryWriter(sys.argv[1], meta)
    start = 0
    for e in range(10_000):
        n = 20 + (e * 7) % 30
        w.add_episode(**make_episode(e, n, start, meta))
        start += n
        print(e, flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 0.77, 1.31])
def test_sigkill_at_an_arbitrary_moment(tmp_path, delay):
    """Not cooperative: kill a busy writer at an arbitrary time, then verify every committed frame."""
    url = str(tmp_path / "loop.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP_CHILD.format(tests=str(TESTS)), url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "0"  # at least one episode committed
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialTailWarning)
        store = TrajectoryStore(url)
    assert store.num_episodes >= 1
    meta_lengths = [20 + (e * 7) % 30 for e in range(store.num_episodes)]
    assert store.episode_lengths.tolist() == meta_lengths
    start = 0
    for e, n in enumerate(meta_lengths):
        expected = make_episode(e, n, start, store.meta)
        got = store.episode(e)
        np.testing.assert_array_equal(got["images"]["front"], expected["images"]["front"])
        np.testing.assert_array_equal(got["action"], expected["action"])
        start += n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartialTailWarning)
        TrajectoryWriter(url).add_episode(**make_episode(store.num_episodes, 3, start, store.meta))
    assert TrajectoryStore(url).num_episodes == store.num_episodes + 1
    assert validate(url).ok


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("episode_chunk", [1024, 2], ids=["its-only-chunk", "first-of-three-chunks"])
def test_a_lost_episode_ends_chunk_is_damage_not_a_partial_tail(tmp_path, episode_chunk, capsys):
    """Issue 25: with meta/episode_ends/c/0 deleted, every entry read back as the fill value, the reader saw 0
    episodes and the next writer "repaired" the whole dataset away. Now each of them refuses, and no file
    changes."""
    from conftest import write_dataset

    from vla.cli import main
    from vla.data import SchemaError

    url = tmp_path / "demo.zarr"
    write_dataset(url, episode_chunk=episode_chunk)  # 5 episodes
    (url / "meta" / "episode_ends" / "c" / "0").unlink()
    before = _files(url)
    with pytest.raises(SchemaError, match="is damaged, and nothing was changed: meta/episode_ends"):
        TrajectoryStore(url)
    with pytest.raises(SchemaError, match="is damaged, and nothing was changed"):
        TrajectoryWriter(url)  # what `vla collect` opens to append
    report = validate(url)
    assert not report.ok and any(f.where == "meta/episode_ends" for f in report.errors)
    assert main(["data", "validate", str(url)]) == 1
    assert "episode_ends" in capsys.readouterr().out
    assert _files(url) == before  # not one byte of the committed episodes was touched
