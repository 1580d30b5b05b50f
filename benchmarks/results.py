"""Results for docs/results.md: one command per experiment, from scripted demos to saved eval reports.

    python benchmarks/results.py experiment=builtin           (configs/experiment/builtin.yaml)
    python benchmarks/results.py experiment=builtin smoke=true   (tiny budgets: what CI runs)

For every variant (e.g. a head) and seed: collect the demos (reused when already there), merge
them when there are several, train with `vla train` (resumed when interrupted), then run each
evaluation with `vla eval`. Writes ``<out>/<variant>/seed<k>/{run/, eval-<name>/}``, and
``summary.json`` + ``table.md`` (success with pooled 95% Wilson intervals, per-seed rates, chunk
latency, training wall time), which are copied to ``docs/results/<experiment>/`` unless smoke.
Prints the summary as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MUJOCO_GL", "egl")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

from vla.config import compose, to_object  # noqa: E402
from vla.hardware import cpu_info

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Collection:
    env: str
    episodes: int = 100
    # extra `vla collect` overrides (cameras, image_size...)
    overrides: list[str] = field(default_factory=list)
    name: str | None = (
        None  # dataset file stem; null = <suite>_<task>-<episodes> (name two collections of one env)
    )


@dataclass
class Evaluation:
    name: str
    # `vla eval` overrides (episodes, instruction_swap, ...)
    overrides: list[str] = field(default_factory=list)
    variants: list[str] | None = None  # only these variants (null = all), e.g. N_o scaling for dual_stream


@dataclass
class ExperimentConfig:
    """Mirrors ``configs/experiment/*.yaml``."""

    name: str = "builtin"
    description: str = ""
    collect: list[Collection] = field(default_factory=list)
    train: list[str] = field(default_factory=list)  # `vla train` overrides shared by every variant
    # name -> extra train overrides (empty: one run)
    variants: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    evals: list[Evaluation] = field(default_factory=list)
    smoke: bool = False
    smoke_train: list[str] = field(default_factory=list)  # appended when smoke=true
    smoke_eval: list[str] = field(default_factory=list)
    smoke_episodes: int = 4  # demos per collection when smoke=true
    smoke_seeds: list[int] = field(default_factory=lambda: [0])
    data_dir: str = "data/results"
    out: str | None = None  # null = runs/results/<name> (runs/results-smoke/<name> when smoke)
    docs: bool = True  # copy summary.json, table.md and the eval reports to docs/results/<name>/
    # true: the summary also keeps the rows of docs/results/<name>/summary.json for every (variant, seed) this
    # invocation does not run, so seeds can be added in later sessions whose run directories are gone
    keep_saved: bool = False
    evals_only: list[str] | None = None  # run only the evaluations with these names (null = all)


def collect_data(cfg: ExperimentConfig) -> str:
    from envs.collect import CollectConfig, collect
    from vla.data.merge import merge

    tag = "smoke-" if cfg.smoke else ""
    counts = [min(c.episodes, cfg.smoke_episodes) if cfg.smoke else c.episodes for c in cfg.collect]
    paths = [
        str(ROOT / cfg.data_dir / f"{tag}{c.name or c.env.replace('/', '_') + f'-{n}'}.zarr")
        for c, n in zip(cfg.collect, counts, strict=True)
    ]
    for path in {
        p for p in paths if paths.count(p) > 1
    }:  # a resumed collection would reuse the other's demos
        raise ValueError(f"experiment {cfg.name}: two collections write {path}; give one of them a `name`")
    for c, episodes, path in zip(cfg.collect, counts, paths, strict=True):
        ccfg = to_object(
            compose(
                "collect", [f"env={c.env}", f"episodes={episodes}", f"out={path}", "videos=0", *c.overrides]
            ),
            CollectConfig,
        )
        summary = collect(ccfg, progress=not cfg.smoke)
        print(f"collect {c.env}: {summary['episodes']} episodes in {path}", file=sys.stderr, flush=True)
    if len(paths) == 1:
        return paths[0]
    merged = str(ROOT / cfg.data_dir / f"{'smoke-' if cfg.smoke else ''}{cfg.name}-merged.zarr")
    if not merged_is_current(merged, paths):
        merge(paths, merged, overwrite=True, progress=False)
    return merged


def merged_is_current(merged: str, sources: list[str]) -> bool:
    """A merged dataset left by an earlier run is reused only if it holds exactly the sources' episodes
    (same instructions, in order); after a collection's size changes it is rebuilt, never silently reused."""
    from vla.data.store import TrajectoryStore

    if not Path(merged).exists():
        return False
    expected = [text for path in sources for text in TrajectoryStore(path).instructions]
    return TrajectoryStore(merged).instructions.tolist() == expected


def train_run(
    cfg: ExperimentConfig, data: str, variant: list[str], seed: int, run: Path
) -> tuple[str, float]:
    from vla.train import TrainConfig, train
    from vla.train.loop import latest_checkpoint

    overrides = [
        *cfg.train,
        *variant,
        f"data.path={data}",
        f"out={run}",
        f"trainer.seed={seed}",
        "resume=auto",
        "trainer.logger=none",
        *(cfg.smoke_train if cfg.smoke else []),
    ]
    tcfg = to_object(compose("train", overrides), TrainConfig)
    timing = run / "train_wall_s.json"
    resumed = latest_checkpoint(run) is not None
    t0 = time.perf_counter()
    checkpoint = train(tcfg, progress=not cfg.smoke)
    wall = time.perf_counter() - t0
    if not timing.exists():  # written once, when the run completes; a finished run is not timed again
        # after an interrupted run only the resumed part is timed, and the file says so
        timing.write_text(
            json.dumps(
                {
                    "wall_s": round(wall, 1),
                    "steps": tcfg.trainer.steps,
                    "batch_size": tcfg.trainer.batch_size,
                    "resumed": resumed,
                }
            )
        )
    return str(checkpoint), json.loads(timing.read_text())["wall_s"]


def evaluate_run(
    cfg: ExperimentConfig, checkpoint: str, ev: Evaluation, seed: int, out: Path
) -> dict[str, Any]:
    from vla.eval import EvalConfig, evaluate

    overrides = [
        f"checkpoint={checkpoint}",
        f"out={out}",
        "videos=1",
        *ev.overrides,
        *(cfg.smoke_eval if cfg.smoke else []),
    ]
    ecfg = to_object(compose("eval", overrides), EvalConfig)
    if (out / "eval.json").exists():
        saved = json.loads((out / "eval.json").read_text())
        same = {k: v for k, v in saved["config"].items() if k not in ("out", "checkpoint")}
        if same == {k: v for k, v in asdict(ecfg).items() if k not in ("out", "checkpoint")}:
            return saved  # already evaluated with this config (the run directory may have moved)
    return evaluate(ecfg, progress=not cfg.smoke)


def saved_rows(cfg: ExperimentConfig, running: set[tuple[str, int]]) -> list[dict]:
    """The rows of the docs' saved summary for (variant, seed) pairs not in ``running``, marked ``kept``."""
    path = ROOT / "docs" / "results" / cfg.name / "summary.json"
    if not path.exists():
        raise FileNotFoundError(
            f"keep_saved=true but {relative(path)} does not exist: run the experiment without it first"
        )
    rows = json.loads(path.read_text())["runs"]
    return [
        {**r, "kept": True}
        for r in rows
        if r["variant"] in cfg.variants and (r["variant"], r["seed"]) not in running
    ]


def train_curve(metrics: Path, every: int = 100) -> dict[str, Any]:
    """Means of each training loss over blocks of ``every`` steps, from a run's ``metrics.jsonl``: the docs
    keep this curve because the run directories are not committed."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    blocks: dict[int, list[dict]] = {}
    for r in rows:
        blocks.setdefault((r["step"] - 1) // every, []).append(r)
    names = sorted({k for r in rows for k in r if k.startswith("loss")})
    losses = {
        name: [float(f"{np.mean([r[name] for r in block if name in r]):.4g}") for block in blocks.values()]
        for name in names
    }
    return {
        "every": every,
        "block_end_steps": [min((b + 1) * every, rows[-1]["step"]) for b in blocks],
        "losses": losses,
    }


def relative(path: str | Path) -> str:
    """Paths in the saved summary are relative to the repository, so the docs hold no machine paths."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def summarize(cfg: ExperimentConfig, rows: list[dict]) -> dict[str, Any]:
    from vla.eval.metrics import wilson

    table = []
    for variant in cfg.variants:
        for ev in cfg.evals:
            cell = [r for r in rows if r["variant"] == variant and r["eval"] == ev.name]
            if not cell:
                continue
            tasks = sorted({t for r in cell for t in r["tasks"]})
            for task in tasks + (["all"] if len(tasks) > 1 else []):
                per_seed = []
                wins = episodes = 0
                latency = []
                for r in cell:
                    ts = r["tasks"].values() if task == "all" else [r["tasks"][task]]
                    w, n = sum(t["successes"] for t in ts), sum(t["episodes"] for t in ts)
                    wins, episodes = wins + w, episodes + n
                    per_seed.append(round(w / n, 4))
                    latency += [t["latency_ms"]["median"] for t in ts]
                lo, hi = wilson(wins, episodes)
                table.append(
                    {
                        "variant": variant,
                        "eval": ev.name,
                        "task": task,
                        "successes": wins,
                        "episodes": episodes,
                        "success_rate": round(wins / episodes, 4),
                        "ci95": [round(lo, 4), round(hi, 4)],
                        "per_seed": per_seed,
                        "latency_ms_median": round(float(np.median(latency)), 1),
                        "train_wall_s": [r["train_wall_s"] for r in cell],
                    }
                )
    return {
        "experiment": cfg.name,
        "description": cfg.description,
        "smoke": cfg.smoke,
        "config": asdict(cfg),
        "rows": table,
        "runs": rows,
        "machine": {
            **cpu_info(),
            "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
    }


def markdown(summary: dict) -> str:
    lines = [
        "| variant | eval | task | success | 95% CI | per seed | chunk latency (ms) | train wall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['variant']} | {r['eval']} | {r['task']} | {r['successes']}/{r['episodes']} "
            f"({r['success_rate']:.0%}) | {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f} | "
            f"{', '.join(f'{p:.2f}' for p in r['per_seed'])} | {r['latency_ms_median']} | "
            f"{', '.join(str(round(w)) for w in r['train_wall_s'])} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """One bar per row of the table: success rate with its 95% interval, chunk latency in the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    labels = [f"{r['variant']} / {r['eval']} / {r['task']}  ({r['latency_ms_median']:.0f} ms)" for r in rows]
    rates = np.array([r["success_rate"] for r in rows])
    err = np.array(
        [[rate - r["ci95"][0], r["ci95"][1] - rate] for r, rate in zip(rows, rates, strict=True)]
    ).T
    fig, ax = plt.subplots(figsize=(5 + 0.07 * max(map(len, labels)), 0.8 + 0.32 * len(rows)))
    y = np.arange(len(rows))[::-1]
    ax.barh(
        y,
        rates,
        xerr=err,
        capsize=3,
        color=[f"C{list(summary['config']['variants']).index(r['variant']) % 10}" for r in rows],
    )
    for yi, r in zip(y, rows, strict=True):
        ax.text(r["ci95"][1] + 0.02, yi, f"{r['successes']}/{r['episodes']}", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0, 1.15)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("success rate (95% Wilson interval); label: median chunk latency")
    ax.set_title(textwrap.fill(f"{summary['experiment']}: {summary['description']}", 100), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> dict[str, Any]:
    cfg: ExperimentConfig = to_object(compose("results", argv), ExperimentConfig)
    out = (
        Path(cfg.out) if cfg.out else ROOT / "runs" / ("results-smoke" if cfg.smoke else "results") / cfg.name
    )
    cfg.variants = cfg.variants or {"default": []}
    data = collect_data(cfg)
    rows = []
    for variant, extra in cfg.variants.items():
        for seed in cfg.smoke_seeds if cfg.smoke else cfg.seeds:
            base = out / variant / f"seed{seed}"
            checkpoint, wall = train_run(cfg, data, extra, seed, base / "run")
            (base / "train_losses.json").write_text(json.dumps(train_curve(base / "run" / "metrics.jsonl")))
            for ev in cfg.evals:
                if (ev.variants is not None and variant not in ev.variants) or (
                    cfg.evals_only is not None and ev.name not in cfg.evals_only
                ):
                    continue
                report = evaluate_run(cfg, checkpoint, ev, seed, base / f"eval-{ev.name}")
                tasks = {
                    k: {
                        key: v[key] for key in ("successes", "episodes", "success_rate", "ci95", "latency_ms")
                    }
                    for k, v in report["tasks"].items()
                }
                rows.append(
                    {
                        "variant": variant,
                        "seed": seed,
                        "eval": ev.name,
                        "checkpoint": relative(checkpoint),
                        "train_wall_s": wall,
                        "tasks": tasks,
                        "eval_dir": relative(base / f"eval-{ev.name}"),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if cfg.keep_saved and not cfg.smoke:
        rows += saved_rows(cfg, {(r["variant"], r["seed"]) for r in rows})
        # per-seed columns in seed order
        rows.sort(key=lambda r: (list(cfg.variants).index(r["variant"]), r["seed"]))
    summary = summarize(cfg, rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text(markdown(summary))
    plot(summary, out / "results.png")
    if cfg.docs and not cfg.smoke:
        docs = ROOT / "docs" / "results" / cfg.name
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "summary.json", docs / "summary.json")
        shutil.copy(out / "table.md", docs / "table.md")
        shutil.copy(out / "results.png", docs / "results.png")
        for r in (
            r for r in rows if not r.get("kept")
        ):  # the eval reports behind every number (no checkpoints, videos)
            target = docs / r["variant"] / f"seed{r['seed']}" / f"eval-{r['eval']}"
            target.mkdir(parents=True, exist_ok=True)
            for name in ("eval.json", "eval.md", "success.png"):
                shutil.copy(ROOT / r["eval_dir"] / name, target / name)  # ROOT / an absolute path = that path
            shutil.copy(
                (ROOT / r["eval_dir"]).parent / "train_losses.json", target.parent / "train_losses.json"
            )
    return summary


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "config")}, indent=2))
