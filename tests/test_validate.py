"""`validate` catches each corruption it claims to, naming the array and index; a clean dataset passes."""

import numpy as np
import pytest
import zarr
from conftest import make_episode, make_meta, write_dataset

from vla.cli import main
from vla.data import ensure_stats, validate


def corrupt(path, fn):
    fn(zarr.open_group(str(path), mode="r+"))


def only_error(report):
    """The one error a single corruption must cause (more would mean one fault is reported twice, or the
    check also fires on what is intact)."""
    assert not report.ok and len(report.errors) == 1, [e.message for e in report.errors]
    return report.errors[0]


def test_clean_dataset_passes(dataset):
    report = validate(dataset)
    assert report.ok and report.findings == [] and report.episodes == 5 and report.frames == 20


def test_missing_dataset(tmp_path):
    assert "no Zarr dataset" in only_error(validate(tmp_path / "nothing.zarr")).message


def test_wrong_format_attr(dataset):
    corrupt(dataset, lambda g: g.attrs.update({"format": "something.else"}))
    assert "not a vla trajectory dataset" in only_error(validate(dataset)).message


def test_missing_array(dataset):
    corrupt(dataset, lambda g: g.__delitem__("data/images/wrist"))
    err = only_error(validate(dataset))
    assert err.where == "data/images/wrist" and "missing" in err.message


def test_wrong_dtype(dataset):
    def to_float64(g):
        values = g["data/action"][:]
        del g["data/action"]
        g.create_array("data/action", data=values.astype(np.float64))

    corrupt(dataset, to_float64)
    err = only_error(validate(dataset))
    assert err.where == "data/action" and "float64, expected float32" in err.message


def test_wrong_image_shape(dataset):
    def shrink(g):
        del g["data/images/front"]
        g.create_array("data/images/front", shape=(20, 12, 15, 3), dtype="uint8")

    corrupt(dataset, shrink)
    err = only_error(validate(dataset))
    assert err.where == "data/images/front" and "expected (N, 12, 16, 3)" in err.message


def test_non_monotone_episode_ends(dataset):
    corrupt(dataset, lambda g: g["meta/episode_ends"].__setitem__(2, 6))  # [5, 8, 6, 16, 20]
    err = only_error(validate(dataset))
    assert (
        err.where == "meta/episode_ends"
        and err.index == 2
        and "episode_ends[1]=8 >= episode_ends[2]=6" in err.message
    )


def test_empty_first_episode(dataset):
    corrupt(dataset, lambda g: g["meta/episode_ends"].__setitem__(0, 0))
    err = only_error(validate(dataset))
    assert err.where == "meta/episode_ends" and err.index == 0


def test_frame_array_shorter_than_episodes(dataset):
    corrupt(dataset, lambda g: g["data/state"].resize((17, 3)))
    err = only_error(validate(dataset))
    assert err.where == "data/state" and "17 rows but episode_ends[-1] = 20" in err.message


def test_episode_array_length_mismatch(dataset):
    corrupt(dataset, lambda g: g["meta/success"].resize((4,)))
    err = only_error(validate(dataset))
    assert err.where == "meta/success" and "4 rows but there are 5 episodes" in err.message


def test_nan_and_inf_named_by_row_episode_and_dim(dataset):
    corrupt(dataset, lambda g: g["data/action"].__setitem__((9, 1), np.inf))
    err = only_error(validate(dataset))
    assert err.where == "data/action" and err.index == 9
    assert "inf at row 9 (episode 2, frame 1), dim 1" in err.message
    corrupt(dataset, lambda g: g["data/state"].__setitem__((0, 0), np.nan))
    assert any(e.where == "data/state" and e.index == 0 for e in validate(dataset).errors)


def test_warnings_blank_frames_bounds_empty_instruction(tmp_path):
    meta = make_meta(action_space=dict(dim=2, low=[-10, -10], high=[10, 10]))
    path = tmp_path / "w.zarr"
    write_dataset(path, lengths=(4, 4), meta=meta)  # actions reach g = 7 (< 10) and -t
    corrupt(path, lambda g: g["data/action"].__setitem__(6, [50.0, 0.0]))
    corrupt(path, lambda g: g["data/images/wrist"].__setitem__(5, 0))
    corrupt(path, lambda g: g["meta/instruction"].__setitem__(slice(1, 2), np.array(["  "], dtype=object)))
    report = validate(path)
    assert report.ok  # warnings only
    by_where = {f.where: f for f in report.warnings}
    assert by_where["data/action"].index == 6 and "episode 1, frame 2" in by_where["data/action"].message
    assert by_where["data/images/wrist"].index == 5 and "1 blank" in by_where["data/images/wrist"].message
    assert by_where["meta/instruction"].index == 1
    assert validate(path, check_images=False).warnings and "data/images/wrist" not in {
        f.where for f in validate(path, check_images=False).warnings
    }


def test_validate_cli_json_and_no_images(tmp_path, capsys):
    import json

    path = tmp_path / "w.zarr"
    write_dataset(path, lengths=(4, 4))
    corrupt(path, lambda g: g["data/images/wrist"].__setitem__(5, 0))
    assert main(["data", "validate", str(path), "--json"]) == 0  # a warning is not a failure
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and (report["episodes"], report["frames"]) == (2, 8)
    blank = [f for f in report["findings"] if f["where"] == "data/images/wrist"]
    assert len(blank) == 1 and blank[0]["index"] == 5 and blank[0]["severity"] == "warning"
    assert main(["data", "validate", str(path), "--json", "--no-images"]) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []  # the blank-frame scan was skipped
    corrupt(path, lambda g: g["data/action"].__setitem__((3, 0), np.inf))
    assert main(["data", "validate", str(path), "--json", "--no-images"]) == 1
    (error,) = json.loads(capsys.readouterr().out)["findings"]
    assert error["severity"] == "error" and error["where"] == "data/action" and error["index"] == 3


def test_stale_and_broken_stats(dataset):
    ensure_stats(dataset)
    assert validate(dataset).findings == []
    from vla.data import TrajectoryWriter

    with TrajectoryWriter(dataset) as w:
        w.add_episode(**make_episode(5, 2, 20))
    assert any(
        f.where == "stats" and "cover 20 frames, dataset has 22" in f.message
        for f in validate(dataset).warnings
    )
    corrupt(dataset, lambda g: g["stats/state/std"].__setitem__(0, np.nan))
    assert any(e.where == "stats/state/std" for e in validate(dataset).errors)


def test_cli_validate_exit_codes(dataset, capsys):
    assert main(["data", "validate", str(dataset)]) == 0
    corrupt(dataset, lambda g: g["data/action"].__setitem__((3, 0), np.nan))
    assert main(["data", "validate", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "ERROR data/action: non-finite value nan at row 3 (episode 0, frame 3), dim 0" in out
    assert "INVALID" in out


def _chunk(url, path):
    """The dataset's first chunk file of ``path`` (every array here has one chunk per dimension)."""
    chunk = next(p for p in sorted((url / path / "c").rglob("*")) if p.is_file())
    return chunk


def test_every_chunk_that_should_exist_does(tmp_path, capsys):
    """Issue 25: a deleted state or action chunk read back as zeros and validate said OK. A dataset written by
    this writer stores every chunk, so a missing one is an error naming the array, the rows and the file."""
    url = tmp_path / "demo.zarr"
    write_dataset(url)
    assert zarr.open_group(str(url), mode="r").attrs["all_chunks_written"] is True
    for path in ("data/state", "data/action", "data/images/front", "meta/success"):
        victim = _chunk(url, path)
        kept = victim.read_bytes()
        victim.unlink()
        report = validate(url)
        assert not report.ok, path
        (finding,) = report.errors
        assert finding.where == path and "is missing" in finding.message and str(victim) in finding.message
        assert main(["data", "validate", str(url)]) == 1
        assert main(["data", "info", str(url)]) == 1  # info says it is invalid instead of summarizing it
        capsys.readouterr()
        victim.write_bytes(kept)
        assert validate(url).ok
    # an all-zero chunk is stored too (zarr would skip it): not taken for a missing one
    zeros = tmp_path / "zeros.zarr"
    meta = make_meta(cameras=["front"])
    write_dataset(zeros, lengths=(3,), meta=meta)
    assert validate(zeros).ok


@pytest.mark.parametrize(
    "damage, where, expect",
    [
        ("truncate", "data/state", r"chunk \(0, 0\) \(.*data/state/c/0/0\) cannot be read"),
        ("garbage", "data/images/front", r"chunk \(0, 0, 0, 0\) \(.*front/c/0/0/0/0\) cannot be read"),
        ("garbage", "meta/episode_ends", r"chunk \(0,\) \(.*episode_ends/c/0\) cannot be read"),
        (
            "metadata",
            "data/action",
            r"array metadata .*data/action/zarr.json cannot be read: JSONDecodeError",
        ),
        ("metadata", "", r"zarr.json cannot be read"),
    ],
)
def test_corrupt_chunks_and_metadata_are_named_with_exit_1_and_nothing_else(tmp_path, damage, where, expect):
    import subprocess
    import sys

    url = tmp_path / "demo.zarr"
    write_dataset(url)
    target = url / where / "zarr.json" if damage == "metadata" else _chunk(url, where)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:20])
    else:
        target.write_bytes(b"{broken" if damage == "metadata" else b"garbage, not blosc")
    report = validate(url)
    assert not report.ok and any(__import__("re").search(expect, f.message) for f in report.errors), (
        report.errors
    )
    for verb in ("validate", "info"):
        run = subprocess.run(
            [sys.executable, "-m", "vla.cli", "data", verb, str(url)], capture_output=True, text=True
        )
        assert run.returncode == 1, (verb, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr and "Task was destroyed" not in run.stderr, run.stderr[-2000:]
