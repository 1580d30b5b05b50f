"""The end of `make demo`: the policy's two result rows, a video of a successful episode, what to try next.

    python -m vla.eval.demo_report runs/demo-reach [--started UNIX_SECONDS]

Reads ``<run>/eval/eval.json`` (held-out scenes, the instruction as given) and ``<run>/eval-swap/eval.json``
(the same scenes, another block named; success still judged on the original block, so a policy that follows
the words scores low there). Writes ``<run>/summary.md`` and prints it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class DemoReportError(ValueError):
    pass


def _load(path: Path) -> dict:
    if not path.is_file():
        raise DemoReportError(f"{path} is missing: run the demo's evaluations first (make demo)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DemoReportError(f"{path} is not an eval report (invalid JSON: {e})") from None


def _row(label: str, report: dict) -> str:
    cfg = report["config"]
    tasks = report.get("tasks") or {}
    if len(tasks) != 1:
        raise DemoReportError(f"expected one task in the eval report, got {sorted(tasks) or 'none'}")
    ((name, t),) = tasks.items()
    seeds = f"seeds {cfg['seed']}-{cfg['seed'] + cfg['episodes'] - 1}"
    return (
        f"| {name}: {label} | **{t['successes']}/{t['episodes']} ({t['success_rate']:.0%})** | "
        f"{t['ci95'][0]:.2f}-{t['ci95'][1]:.2f} | {seeds} |"
    )


def success_video(eval_dir: Path) -> Path | None:
    """The lowest-seed video of a successful episode under ``eval_dir/videos``, if any was saved."""
    found = sorted(
        (eval_dir / "videos").glob("*/seed*_success.mp4"), key=lambda p: int(p.stem[4:].split("_")[0])
    )
    return found[0] if found else None


def summarize(run: Path, started: float | None = None) -> str:
    """The demo's closing summary, as markdown."""
    main, swap = _load(run / "eval" / "eval.json"), _load(run / "eval-swap" / "eval.json")
    try:
        if not swap["config"].get("instruction_swap"):
            raise DemoReportError(f"{run / 'eval-swap'} was not evaluated with instruction_swap=true")
        rows = [
            _row("instruction as given", main),
            _row("another block named (success on the original block: low = follows the words)", swap),
        ]
        checkpoint = main["checkpoint"]
    except (KeyError, TypeError, AttributeError) as e:
        raise DemoReportError(f"an eval report under {run} lacks a field `vla eval` writes: {e!r}") from None
    lines = [
        f"# Demo: {checkpoint or 'scripted expert'}",
        "",
        "| eval | success | 95% CI | held-out scenes |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    video = success_video(run / "eval")
    lines.append(f"video of a successful episode: {video}" if video else "no successful episode was filmed")
    if started is not None:
        elapsed = time.time() - started
        lines.append(f"demo wall time (collect -> train -> evaluate, setup excluded): {elapsed / 60:.1f} min")
    serve = (
        f"serve it to a robot or a client with `vla serve checkpoint={checkpoint}`; " if checkpoint else ""
    )
    lines += [
        "",
        f"next: {serve}the full built-in suite (push and reach, 3 seeds) is `make results-builtin`, every "
        "measured result in docs/results.md",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the demo's run directory (runs/demo-reach)")
    parser.add_argument("--started", type=float, help="when the demo started (unix seconds)")
    args = parser.parse_args(argv)
    try:
        text = summarize(args.run, args.started)
    except DemoReportError as e:
        print(f"demo report: {e}", file=sys.stderr)
        return 2
    (args.run / "summary.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
