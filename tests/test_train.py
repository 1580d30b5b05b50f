"""`vla train`: checkpoints that load, a loss that falls, exact resume after SIGKILL, DDP == 1 process."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from envs.collect import CollectConfig, collect
from vla.config import ConfigError, compose, to_object
from vla.models import load_policy
from vla.train import TrainConfig, TrainError, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train") / "push.zarr")
    collect(CollectConfig(episodes=8, out=out, image_size=32, videos=0), progress=False)
    return out


def overrides(dataset, out, *extra):
    return [
        f"data.path={dataset}",
        f"out={out}",
        "data.num_workers=0",
        "trainer.batch_size=8",
        "trainer.log_every=1",
        "trainer.val_every=10",
        "trainer.warmup_steps=2",
        "trainer.lr=1e-3",
        *extra,
    ]


def config(*args) -> TrainConfig:
    return to_object(compose("train", list(args)), TrainConfig)


def losses(run) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        r["step"]: r["loss"] for r in rows if "loss" in r
    }  # a resumed run re-logs steps: the last entry wins


def test_few_steps_give_a_loadable_checkpoint(dataset, tmp_path):
    ckpt = train(
        config(*overrides(dataset, tmp_path / "run", "trainer.steps=6", "trainer.checkpoint_every=3")),
        progress=False,
    )
    assert ckpt == tmp_path / "run" / "checkpoints" / "step_000006"
    assert (tmp_path / "run" / "config.yaml").exists() and any((tmp_path / "run" / "tb").iterdir())
    assert sorted(losses(tmp_path / "run")) == list(range(1, 7))
    policy = load_policy(ckpt)
    obs = {
        "images": {"top": np.zeros((32, 32, 3), np.uint8)},
        "state": np.zeros(4, np.float32),
        "instruction": "push the red block onto the blue pad",
    }
    assert policy.predict_chunk(obs).shape == (1, 8, 2)
    # the run directory's resolved config reads back as the TrainConfig that trained it
    saved = to_object(OmegaConf.load(tmp_path / "run" / "config.yaml"), TrainConfig)
    expected = config(*overrides(dataset, tmp_path / "run", "trainer.steps=6", "trainer.checkpoint_every=3"))
    assert type(saved) is TrainConfig and saved == expected and saved.trainer.steps == 6


def tensors(path) -> dict:
    import safetensors.torch

    return safetensors.torch.load_file(str(path / "model.safetensors"))


def assert_same_tensors(a: dict, b: dict, what: str, atol: float = 0.0) -> None:
    import torch

    assert a.keys() == b.keys(), what
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=f"{what}: {name}")


def test_checkpoints_export_ema_weights_keep_the_best_and_prune(dataset, tmp_path):
    """Checkpoints hold the EMA weights (not the raw ones the trainer state keeps), ``best/`` the EMA
    weights of the lowest validation loss, and only the last ``keep_last`` step directories stay."""
    import torch

    def run(name, *extra):
        train(
            config(
                *overrides(
                    dataset,
                    tmp_path / name,
                    "trainer.steps=8",
                    "trainer.checkpoint_every=2",
                    "trainer.val_every=2",
                    "trainer.ema_decay=0.9",
                    "trainer.lr=3e-3",
                    *extra,
                )
            ),
            progress=False,
        )
        return tmp_path / name / "checkpoints"

    every = run("all", "trainer.keep_last=0")
    assert sorted(p.name for p in every.iterdir()) == ["best"] + [f"step_{s:06d}" for s in (2, 4, 6, 8)]
    state = torch.load(every / "step_000008" / "trainer_state.pt", weights_only=True)
    exported = tensors(every / "step_000008")
    trained = [n for n, p in load_policy(every / "step_000008").named_parameters() if p.requires_grad]
    shadow = dict(zip(trained, state["ema"]["shadow_params"], strict=True))
    assert_same_tensors({n: exported[n] for n in trained}, shadow, "exported vs EMA")
    assert any((state["model"][n] - shadow[n]).abs().max() > 1e-4 for n in trained)  # EMA is not raw
    rows = [json.loads(line) for line in (every.parent / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert sorted(val) == [2, 4, 6, 8]
    best_step = min(val, key=val.get)
    assert_same_tensors(tensors(every / "best"), tensors(every / f"step_{best_step:06d}"), "best/")

    kept = run("kept", "trainer.keep_last=2")
    assert sorted(p.name for p in kept.iterdir()) == ["best", "step_000006", "step_000008"]
    for name in ("best", "step_000008"):  # pruning changes which directories stay, not what they hold
        assert_same_tensors(tensors(kept / name), tensors(every / name), name)


def test_best_holds_the_lowest_validation_loss_across_a_crash_and_resume(dataset, tmp_path, monkeypatch):
    """Scripted validation losses 3, 1 | crash | 2, 4: ``best/`` is step 4's export before the crash and stays
    so after the resume, which must remember the best loss so far (2 is not better than 1)."""
    import importlib

    loop = importlib.import_module("vla.train.loop")
    scripted = iter([3.0, 1.0, "crash", 2.0, 4.0])

    def validate_loss(*args, **kwargs):
        value = next(scripted)
        if value == "crash":
            raise KeyboardInterrupt("the run is interrupted at step 6")
        return value

    monkeypatch.setattr(loop, "validate_loss", validate_loss)
    args = overrides(
        dataset,
        tmp_path / "run",
        "trainer.steps=8",
        "trainer.checkpoint_every=2",
        "trainer.val_every=2",
        "trainer.keep_last=0",
        "trainer.ema_decay=0.9",
    )
    with pytest.raises(KeyboardInterrupt):
        train(config(*args), progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best", "step_000002", "step_000004"]
    assert_same_tensors(tensors(checkpoints / "best"), tensors(checkpoints / "step_000004"), "best/")
    train(config(*args, "resume=true"), progress=False)
    assert sorted(p.name for p in checkpoints.iterdir())[-1] == "step_000008"
    assert_same_tensors(
        tensors(checkpoints / "best"), tensors(checkpoints / "step_000004"), "best/ after resume"
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in rows if "val_loss" in r] == [3.0, 1.0, 2.0, 4.0]


def test_grad_accum_takes_micro_batches_and_grad_clip_bounds_the_step(dataset, tmp_path, monkeypatch):
    import torch
    from accelerate import Accelerator

    from vla.models import Policy

    calls, norms = [], []
    compute_loss, clip = Policy.compute_loss, Accelerator.clip_grad_norm_

    def counting(self, batch, noise=None):
        if self.training:
            calls.append(len(batch["action"]))
        return compute_loss(self, batch, noise)

    def clipping(self, parameters, max_norm, *args, **kwargs):
        parameters = [p for p in parameters if p.grad is not None]
        before = clip(self, parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
        norms.append((float(before), float(after), max_norm))
        return before

    monkeypatch.setattr(Policy, "compute_loss", counting)
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clipping)
    args = ["trainer.steps=3", "trainer.checkpoint_every=3", "trainer.batch_size=4"]
    train(
        config(*overrides(dataset, tmp_path / "a", *args, "trainer.grad_accum=2", "trainer.grad_clip=0.01")),
        progress=False,
    )
    assert calls == [4] * 6  # 3 steps of 2 micro-batches of 4
    assert len(norms) == 3 and all(b > 0.01 and a <= 0.01 * 1.001 and m == 0.01 for b, a, m in norms), norms
    calls.clear(), norms.clear()
    train(config(*overrides(dataset, tmp_path / "b", *args, "trainer.grad_clip=0")), progress=False)
    assert calls == [4] * 3 and norms == []  # no accumulation, no clipping


def test_periodic_evaluation_logs_success(dataset, tmp_path):
    train(
        config(
            *overrides(
                dataset,
                tmp_path / "run",
                "trainer.steps=4",
                "trainer.checkpoint_every=2",
                "trainer.eval_episodes=2",
            )
        ),
        progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "success/builtin/push" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(0 <= r["success/builtin/push"] <= 1 for r in evals)
    assert (tmp_path / "run" / "eval" / "step_000004" / "eval.md").exists()


def test_loss_decreases(dataset, tmp_path):
    train(
        config(
            *overrides(
                dataset,
                tmp_path / "run",
                "head=flow",
                "trainer.steps=80",
                "trainer.checkpoint_every=80",
                "trainer.ema_decay=0",
                "trainer.val_every=10",
            )
        ),
        progress=False,
    )
    curve = losses(tmp_path / "run")
    first, last = np.mean([curve[s] for s in range(1, 11)]), np.mean([curve[s] for s in range(71, 81)])
    assert last < 0.7 * first, (first, last)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]  # held-out episodes, fixed noise
    assert len(val) == 8 and val[-1] < val[0], val


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(dataset, tmp_path):
    """Losses, exported EMA weights, ``best/``, the kept checkpoints and their trainer state: all those of the
    run that was never killed."""
    import torch

    args = overrides(
        dataset, tmp_path / "full", "head=flow", "trainer.steps=30", "trainer.checkpoint_every=6"
    )
    train(config(*args), progress=False)
    reference = losses(tmp_path / "full")

    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "vla.cli",
        "train",
        *[a.replace(str(tmp_path / "full"), str(killed)) for a in args],
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while (
        time.time() < deadline and not (killed / "checkpoints" / "step_000012" / "trainer_state.pt").exists()
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = losses(killed)
    assert 12 <= max(done) < 30, "the kill should land mid-run"
    train(
        config(*[a.replace(str(tmp_path / "full"), str(killed)) for a in args], "resume=true"), progress=False
    )
    resumed = losses(killed)
    assert sorted(resumed) == list(range(1, 31))
    np.testing.assert_allclose(
        [resumed[s] for s in range(1, 31)], [reference[s] for s in range(1, 31)], rtol=1e-5
    )
    full_dir, killed_dir = tmp_path / "full" / "checkpoints", killed / "checkpoints"
    names = sorted(p.name for p in full_dir.iterdir())
    assert names == ["best", "step_000018", "step_000024", "step_000030"]  # keep_last=3, and best/
    assert sorted(p.name for p in killed_dir.iterdir()) == names
    for name in names:
        a, b = full_dir / name, killed_dir / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir()), name
        assert_same_tensors(tensors(a), tensors(b), f"{name} exported (EMA) weights", atol=1e-5)
        for file in ("config.yaml", "meta.json", "norm_stats.json"):
            assert (a / file).read_text() == (b / file).read_text(), f"{name}/{file}"
    state_a, state_b = (
        torch.load(d / "step_000030" / "trainer_state.pt", weights_only=True) for d in (full_dir, killed_dir)
    )
    assert state_a["step"] == state_b["step"] == 30 and state_a["best_val"] == pytest.approx(
        state_b["best_val"], rel=1e-5
    )
    assert state_a["ema"]["optimization_step"] == state_b["ema"]["optimization_step"] == 30
    for x, y in zip(state_a["ema"]["shadow_params"], state_b["ema"]["shadow_params"], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    assert_same_tensors(state_a["model"], state_b["model"], "raw weights", atol=1e-5)


def test_prefilled_feature_memo_trains_like_the_uncached_run(dataset, tmp_path, monkeypatch):
    """A run that draws at least a dataset's worth of windows encodes every frame up front; the losses are
    those of the run without the memo."""
    import vla.train.loop as loop
    from vla.data import TrajectoryStore

    prefilled = []
    real = loop.prefill_features
    monkeypatch.setattr(
        loop, "prefill_features", lambda policy, *a: prefilled.append(policy) or real(policy, *a)
    )
    steps = -(-TrajectoryStore(dataset).num_frames // 8)  # steps * batch_size >= frames
    run = {}
    for cache in ["auto", "false"]:
        run[cache] = tmp_path / cache
        train(
            config(
                *overrides(
                    dataset,
                    run[cache],
                    "policy.backbone.finetune=frozen",
                    f"trainer.steps={steps}",
                    f"trainer.checkpoint_every={steps}",
                    f"trainer.cache_features={cache}",
                )
            ),
            progress=False,
        )
    assert (
        len(prefilled) == 1 and prefilled[0].backbone.image_memo.misses == TrajectoryStore(dataset).num_frames
    )
    cached, plain = losses(run["auto"]), losses(run["false"])
    np.testing.assert_allclose(
        [cached[s] for s in range(1, steps + 1)], [plain[s] for s in range(1, steps + 1)], rtol=1e-4
    )


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(dataset, tmp_path):
    args = overrides(dataset, tmp_path / "single", "trainer.steps=8", "trainer.checkpoint_every=8")
    train(config(*args), progress=False)
    ddp = [a.replace(str(tmp_path / "single"), str(tmp_path / "ddp")) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "vla.cli",
            "train",
            *ddp,
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert {r["processes"] for r in rows} == {2}  # really two processes, not two independent runs
    single, double = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    np.testing.assert_allclose([double[s] for s in range(1, 9)], [single[s] for s in range(1, 9)], rtol=2e-3)


def test_bad_configs_fail_before_any_compute(dataset, tmp_path):
    with pytest.raises(TrainError, match="data.path is not set"):
        train(config(f"out={tmp_path / 'a'}"), progress=False)
    with pytest.raises(FileNotFoundError, match="no Zarr dataset"):
        train(config(f"data.path={tmp_path / 'none.zarr'}", f"out={tmp_path / 'b'}"), progress=False)
    with pytest.raises(TrainError, match=r"data.cameras \['wrist'\] are not in"):
        train(config(*overrides(dataset, tmp_path / "c"), "data.cameras=[wrist]"), progress=False)
    with pytest.raises(TrainError, match="data.horizon=4 but the policy predicts chunks of 8"):
        train(config(*overrides(dataset, tmp_path / "d"), "data.horizon=4"), progress=False)
    with pytest.raises(TrainError, match="resume=true but"):
        train(config(*overrides(dataset, tmp_path / "e"), "resume=true"), progress=False)
    with pytest.raises(
        TrainError, match="cache_features=true needs a composite backbone with finetune=frozen"
    ):
        # tiny: full
        train(config(*overrides(dataset, tmp_path / "g"), "trainer.cache_features=true"), progress=False)
    with pytest.raises(TrainError, match="cache_features must be true, false or auto"):
        train(config(*overrides(dataset, tmp_path / "h"), "trainer.cache_features=sometimes"), progress=False)
    with pytest.raises(TrainError, match="val_every and log_every are step intervals and must be >= 1"):
        train(config(*overrides(dataset, tmp_path / "h"), "trainer.val_every=0"), progress=False)
    with pytest.raises(TrainError, match="task_weights .* needs trainer.balance_tasks=true"):
        train(
            config(*overrides(dataset, tmp_path / "i"), "trainer.task_weights={builtin/push:2}"),
            progress=False,
        )
    with pytest.raises(TrainError, match=r"names \['builtin/pick'\], which are not tasks of this dataset"):
        train(
            config(
                *overrides(dataset, tmp_path / "i"),
                "trainer.balance_tasks=true",
                "trainer.task_weights={builtin/pick:2}",
            ),
            progress=False,
        )
    for value in ("3", "{grounding.stem:fast}"):  # typed Any in the schema, so checked here
        with pytest.raises(TrainError, match="trainer.lr_scale must be a mapping of names to numbers"):
            train(config(*overrides(dataset, tmp_path / "j"), f"trainer.lr_scale={value}"), progress=False)
    train(
        config(*overrides(dataset, tmp_path / "f"), "trainer.steps=2", "trainer.checkpoint_every=2"),
        progress=False,
    )
    with pytest.raises(TrainError, match="already holds checkpoints"):
        train(config(*overrides(dataset, tmp_path / "f"), "trainer.steps=2"), progress=False)
    again = train(
        config(*overrides(dataset, tmp_path / "f"), "trainer.steps=2", "resume=auto"), progress=False
    )
    assert again == tmp_path / "f" / "checkpoints" / "step_000002"  # already done: nothing to train
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrainError, match="not writable"):
        train(config(*overrides(dataset, blocker / "run")), progress=False)
    with pytest.raises(ConfigError, match="trainer.stepz"):
        config("trainer.stepz=3")


def test_task_balanced_batches_give_each_task_an_equal_share():
    from vla.train.loop import StepBatches, task_balanced_weights

    tasks = np.array(["push"] * 900 + ["reach"] * 100)
    weights = task_balanced_weights(tasks)
    assert weights.sum() == pytest.approx(1.0) and weights[-1] == pytest.approx(9 * weights[0])
    batches = list(StepBatches(len(tasks), 64, 0, 0, 200, 0, 1, weights))
    drawn = tasks[np.concatenate(batches)]
    assert abs((drawn == "reach").mean() - 0.5) < 0.03  # 10% of the windows, half of the draws
    again = list(StepBatches(len(tasks), 64, 0, 100, 200, 0, 1, weights))
    assert again == batches[100:]  # a pure function of (seed, step): resumable
    plain = np.concatenate(list(StepBatches(len(tasks), 64, 0, 0, 200, 0, 1)))
    assert abs((tasks[plain] == "reach").mean() - 0.1) < 0.03
    # task_weights: push 3 to reach's (unnamed) 1 gives push three quarters of the draws
    weighted = task_balanced_weights(tasks, {"push": 3.0})
    assert weighted.sum() == pytest.approx(1.0)
    drawn = tasks[np.concatenate(list(StepBatches(len(tasks), 64, 0, 0, 200, 0, 1, weighted)))]
    assert abs((drawn == "push").mean() - 0.75) < 0.03
    with pytest.raises(
        TrainError,
        match=r"names \['pick'\], which are not tasks of this dataset; its tasks: \['push', 'reach'\]",
    ):
        task_balanced_weights(tasks, {"pick": 2.0})
    with pytest.raises(TrainError, match="must be positive"):
        task_balanced_weights(tasks, {"push": 0.0})


def test_lr_scale_gives_named_parameters_their_own_rate_and_rejects_unknown_names():
    import torch

    from vla.train.loop import param_groups

    model = torch.nn.ModuleDict({"stem": torch.nn.Linear(3, 4), "head": torch.nn.Linear(4, 2)})
    groups = param_groups(model, weight_decay=0.1, lr=1e-3, lr_scale={"stem": 3.0})
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert by_param[id(model["stem"].weight)] == (pytest.approx(3e-3), 0.1)
    assert by_param[id(model["stem"].bias)] == (pytest.approx(3e-3), 0.0)  # biases: no decay, scaled rate
    assert by_param[id(model["head"].weight)] == (1e-3, 0.1) and by_param[id(model["head"].bias)] == (
        1e-3,
        0.0,
    )
    assert len(by_param) == 4
    with pytest.raises(TrainError, match=r"lr_scale names \['stme'\], which match no trainable parameter"):
        param_groups(model, 0.1, 1e-3, {"stme": 3.0})
    # the scheduler scales every group from its own rate
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 10)
    optimizer.step()
    scheduler.step()
    rates = sorted(g["lr"] for g in optimizer.param_groups)
    assert rates[-1] == pytest.approx(3 * rates[0])
