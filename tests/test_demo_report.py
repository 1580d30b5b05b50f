"""`make demo`'s closing summary, from real eval reports (the scripted expert, a random tiny policy)."""

from __future__ import annotations

import json

import pytest

from vla.eval import EvalConfig, evaluate
from vla.eval.demo_report import main, summarize


def run_evals(run, **policy):
    common = dict(env="builtin/reach", episodes=3, seed=100000, max_steps=8, **policy)
    evaluate(EvalConfig(**common, videos=2, out=str(run / "eval")), progress=False)
    evaluate(
        EvalConfig(**common, videos=0, instruction_swap=True, out=str(run / "eval-swap")), progress=False
    )


def test_summary_rows_video_and_next_step(tmp_path, capsys):
    run = tmp_path / "run"
    run_evals(run, expert=True)
    main_report = json.loads((run / "eval" / "eval.json").read_text())
    wins = main_report["tasks"]["builtin/reach"]["successes"]
    assert wins == 3  # the expert reaches in a few steps; it ignores the words, so it wins the swap row too

    assert main([str(run), "--started", "1000"]) == 0
    text = capsys.readouterr().out
    assert text == (run / "summary.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| builtin/reach")]
    assert len(rows) == 2
    assert "instruction as given | **3/3 (100%)** | 0.44-1.00 | seeds 100000-100002" in rows[0]
    assert "another block named" in rows[1] and "**3/3 (100%)**" in rows[1]
    video = next(line for line in text.splitlines() if line.startswith("video of a successful episode"))
    path = run / "eval" / "videos" / "builtin_reach" / "seed100000_success.mp4"
    assert video.endswith(str(path)) and path.is_file()
    assert "demo wall time" in text and "make results-builtin" in text


def test_summary_says_when_no_episode_succeeded(random_checkpoint, tmp_path):
    run = tmp_path / "run"
    # the random policy is for builtin/push; its two evaluations, neither with a success in 2 steps
    common = dict(checkpoint=random_checkpoint, episodes=2, max_steps=2, seed=100000)
    evaluate(EvalConfig(**common, videos=2, out=str(run / "eval")), progress=False)
    evaluate(
        EvalConfig(**common, videos=0, instruction_swap=True, out=str(run / "eval-swap")), progress=False
    )
    text = summarize(run)
    assert "**0/2 (0%)**" in text and "no successful episode was filmed" in text
    assert f"vla serve checkpoint={random_checkpoint}" in text and "demo wall time" not in text


def test_missing_or_wrong_reports_are_named(tmp_path, capsys):
    run = tmp_path / "run"
    run_evals(run, expert=True)
    swap = run / "eval-swap" / "eval.json"
    report = json.loads(swap.read_text())
    report["config"]["instruction_swap"] = False
    swap.write_text(json.dumps(report))
    assert main([str(run)]) == 2
    assert "was not evaluated with instruction_swap=true" in capsys.readouterr().err
    swap.unlink()
    assert main([str(run)]) == 2
    assert f"{swap} is missing" in capsys.readouterr().err
    run_evals(run, expert=True)
    (run / "eval" / "eval.json").write_text(json.dumps({"config": {}, "tasks": {"builtin/reach": {}}}))
    with pytest.raises(ValueError, match="lacks a field `vla eval` writes"):
        summarize(run)
    (run / "eval" / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not an eval report"):
        summarize(run)
