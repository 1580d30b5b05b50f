"""Benchmarks run and print the JSON they promise (tiny budgets; the figures come from full runs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vla.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(name, *overrides):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *overrides],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    )
    return json.loads(out.stdout)


def test_bench_list(capsys):
    assert main(["bench", "--list"]) == 0
    assert capsys.readouterr().out.split() == [
        "data_throughput",
        "env_speed",
        "expert_success",
        "fast_path_eval",
        "lerobot_act_compare",
        "openloop_error",
        "peer_latency",
        "policy_latency",
        "push_oracle",
        "push_outcomes",
        "results",
        "robot_loop",
        "serve_attack",
        "serve_latency",
        "train_throughput",
    ]
    assert main(["bench", "nope"]) == 2


@pytest.mark.slow
def test_data_throughput_smoke():
    result = run_benchmark(
        "data_throughput", "episodes=4", "episode_length=10", "seconds=0.3", "batch_size=8",
        "codecs=[none,jpeg]", "codec_render_frames=20", "codec_frames=100", "codec_image_size=64",
        "large_codec=null",
    )  # fmt: skip
    assert result["frames"] == 40 and result["compression_ratio"] > 1
    assert result["windows_per_s"]["single_process_getitem"] > 0
    assert result["windows_per_s"]["from_disk_dataloader_workers_2"] > 0
    raw, jpeg = result["codec_rows"]
    assert raw["codec"] == "raw (blosc zstd)" and raw["lossless"] and raw["psnr_db_min"] is None
    assert jpeg["codec"] == "jpeg q85" and not jpeg["lossless"] and jpeg["psnr_db_min"] > 30
    assert jpeg["bytes_per_frame"] < raw["bytes_per_frame"] < raw["raw_bytes_per_frame"] == 3 * 64 * 64 * 3
    assert jpeg["windows_per_s_from_disk"]["workers_0"] > 0 and "large_row" not in result


@pytest.mark.slow
def test_env_speed_and_expert_success_smoke():
    speed = run_benchmark("env_speed", "envs=[builtin/push]", "steps=20")
    assert (
        speed["envs"]["builtin/push"]["no_cameras"] > speed["envs"]["builtin/push"]["with_cameras_fast"] > 0
    )
    experts = run_benchmark("expert_success", "envs=[builtin/push]", "episodes=5")
    assert experts["envs"]["builtin/push"]["successes"] == 5


@pytest.mark.slow
def test_policy_latency_smoke():
    result = run_benchmark(
        "policy_latency", "presets=[tiny]", "heads=[dual_stream]", "vision_steps=[0,4]", "repeats=2"
    )
    rows = {r["vision_steps"]: r for r in result["rows"]}
    assert set(rows) == {0, 4} and rows[0]["params_m"] > 0 and rows[4]["median_ms"] > 0


@pytest.mark.slow
def test_train_throughput_smoke():
    result = run_benchmark(
        "train_throughput",
        "presets=[tiny]",
        "heads=[flow]",
        "steps=2",
        "warmup=1",
        "episodes=4",
        "batch_size=8",
    )
    (row,) = result["rows"]
    assert row["samples_per_s"] > 0 and row["peak_rss_mib"] > 0 and row["params_m"] > 0


def test_robot_loop_smoke():
    result = run_benchmark("robot_loop", "presets=[tiny]", "rates=[20]", "seconds=1")
    (row,) = result["rows"]
    assert row["preset"] == "tiny" and row["rate_hz"] == 20 and row["steps"] == 20
    assert row["round_trip_ms_p95"] > 0 and row["tick_jitter_ms_p99"] >= row["tick_jitter_ms_p50"] >= 0
    assert row["chunk_ms"] == row["horizon"] / 20 * 1e3 and not row["errors"]


@pytest.mark.slow
def test_serve_latency_smoke():
    result = run_benchmark("serve_latency", "presets=[tiny]", "repeats=3", "clients=[1,2]", "seconds=0.5")
    (row,) = result["rows"]
    assert row["round_trip_ms"] > 0 and row["in_process_ms"] > 0
    for batching in ("batched", "unbatched"):
        assert [r["clients"] for r in row[batching]] == [1, 2]
        assert all(r["requests_per_s"] > 0 and not r["errors"] for r in row[batching])
    assert max(r["mean_batch_size"] for r in row["unbatched"]) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment",
    ["builtin", "heads_builtin", "heads_lift", "lift", "pickplacecan", "liftcolor", "mt10", "heads_reach"],
)
def test_results_smoke(experiment, tmp_path):
    """Every docs/results.md command end to end on a tiny budget: demos -> train -> eval -> summary."""
    result = run_benchmark("results", f"experiment={experiment}", "smoke=true", f"out={tmp_path / 'out'}")
    assert result["experiment"] == experiment and result["smoke"] and result["rows"]
    for row in result["rows"]:
        assert row["episodes"] > 0 and 0.0 <= row["success_rate"] <= 1.0 and row["latency_ms_median"] > 0
    assert (tmp_path / "out" / "table.md").exists() and (tmp_path / "out" / "results.png").stat().st_size > 0
    runs = sorted(p.parent for p in (tmp_path / "out").glob("*/seed*/run"))
    assert runs
    for run in runs:  # every run's training curve, which the docs keep
        curve = json.loads((run / "train_losses.json").read_text())
        steps = json.loads((run / "run" / "train_wall_s.json").read_text())["steps"]
        assert curve["block_end_steps"][-1] == steps and curve["losses"]["loss"][0] > 0


def test_results_keep_saved_rows_of_seeds_not_run(tmp_path, monkeypatch):
    """keep_saved: seeds added in a later session join the saved summary's rows of the earlier seeds."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import results

    monkeypatch.setattr(results, "ROOT", tmp_path)
    cfg = results.ExperimentConfig(name="heads", variants={"flow": [], "diffusion": []})
    with pytest.raises(
        FileNotFoundError, match="keep_saved=true but docs/results/heads/summary.json does not exist"
    ):
        results.saved_rows(cfg, set())
    saved = [{"variant": v, "seed": k, "eval": "main"} for v in ("flow", "diffusion", "gone") for k in (0, 1)]
    (tmp_path / "docs" / "results" / "heads").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "heads" / "summary.json").write_text(json.dumps({"runs": saved}))
    kept = results.saved_rows(cfg, {("flow", 1)})
    assert [(r["variant"], r["seed"]) for r in kept] == [("flow", 0), ("diffusion", 0), ("diffusion", 1)]
    assert all(r["kept"] for r in kept)


def test_results_train_curve_averages_blocks_of_steps(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import results

    rows = [{"step": k, "loss": float(k), "loss_locate": 2.0 * k, "lr": 1e-3} for k in range(1, 251)]
    rows[10].pop("loss_locate")  # a row without one of the losses: averaged over the rows that have it
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    curve = results.train_curve(tmp_path / "metrics.jsonl", every=100)
    assert curve["block_end_steps"] == [100, 200, 250] and sorted(curve["losses"]) == ["loss", "loss_locate"]
    assert curve["losses"]["loss"] == [50.5, 150.5, 225.5]
    assert curve["losses"]["loss_locate"][0] == pytest.approx(2 * (5050 - 11) / 99, rel=1e-3)


def test_push_outcomes_counts_what_the_episodes_did(random_checkpoint):
    with pytest.raises(subprocess.CalledProcessError) as refused:
        run_benchmark("push_outcomes", f"checkpoint={random_checkpoint}", "episodes=1", "true_targets=true")
    assert "trained without grounding.locate_condition" in refused.value.stderr
    result = run_benchmark(
        "push_outcomes", f"checkpoint={random_checkpoint}", "episodes=2", "seed=7", "noise_scale=0.5"
    )
    assert "locate_abs_error" not in result["summary"]  # this policy has no locate readout
    episodes = result["episodes"]
    assert [e["seed"] for e in episodes] == [7, 8]
    assert all(0 < e["steps"] <= 60 and e["target_to_pad_start"] > 0 for e in episodes)
    summary = result["summary"]
    assert summary["touched_target"] == sum(e["touched_target"] for e in episodes) / 2
    assert summary["mean_closer_to_pad"] == pytest.approx(
        sum(e["target_to_pad_start"] - e["target_to_pad_end"] for e in episodes) / 2, abs=1e-3
    )


def test_push_outcomes_runs_a_reach_policy_on_reach(tmp_path):
    from conftest import make_random_checkpoint

    reach = make_random_checkpoint(tmp_path / "reach", env="builtin/reach")
    result = run_benchmark("push_outcomes", f"checkpoint={reach}", "episodes=2", "execute_steps=8")
    # reach episodes end at 40 steps (push's at 60); a random policy rarely touches the block sooner
    assert all(0 < e["steps"] <= 40 for e in result["episodes"])
    assert max(e["steps"] for e in result["episodes"]) == 40 or result["summary"]["success"] > 0


def test_push_oracle_regresses_the_expert_and_rolls_it_out():
    result = run_benchmark(
        "push_oracle",
        "demos=5",
        "steps=3",
        "episodes=2",
        "execute_steps=[1,8]",
        "perception_noise=[0.05]",
        "train_noise=[0.0,0.05]",
    )
    assert result["frames"] > 5
    rows = result["rows"]
    assert [(r["train_noise"], r["execute_steps"], r["test_noise"]) for r in rows] == [
        (n, e, kind)
        for n in (0.0, 0.05)
        for e, kind in ((1, "none"), (8, "none"), (1, "per_step"), (1, "per_episode"))
    ]
    assert all(r["final_loss"] > 0 and 0 <= r["success_rate"] <= 1 for r in rows)
    assert rows[0]["final_loss"] != rows[4]["final_loss"]  # the jittered inputs change the fit


def test_push_oracle_counts_no_success_for_a_regressor_that_never_moves(monkeypatch):
    """The success column can read 0: a regressor whose chunks are all zeros pushes nothing."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import push_oracle

    cfg = push_oracle.BenchConfig(episodes=2)
    still = torch.nn.Linear(8, cfg.horizon * 2)
    torch.nn.init.zeros_(still.weight), torch.nn.init.zeros_(still.bias)
    assert push_oracle.rollout_success(still, cfg, execute=8) == 0.0


@pytest.mark.slow
def test_openloop_error_smoke(tmp_path, random_checkpoint):
    from envs.collect import CollectConfig, collect

    data = str(tmp_path / "push.zarr")
    collect(CollectConfig(episodes=2, out=data, cameras=["top"], videos=0), progress=False)
    result = run_benchmark(
        "openloop_error", f"checkpoint={random_checkpoint}", f"datasets=[{data}]", "episodes=2"
    )
    (row,) = result["rows"]
    assert row["windows"] > 0 and row["chunk_abs_error"] > 0 and row["mean_abs_action"] > 0


def test_results_collections_of_one_env_need_names(tmp_path, monkeypatch):
    """Two collections of one env (say clean and noisy demos) must not share a dataset file."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import results

    twice = [
        results.Collection(env="builtin/reach", episodes=2, overrides=["cameras=[top]", "image_size=32"]),
        results.Collection(
            env="builtin/reach", episodes=2, overrides=["cameras=[top]", "image_size=32", "noise_std=0.2"]
        ),
    ]
    cfg = results.ExperimentConfig(name="twice", collect=twice, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="two collections write .*builtin_reach-2.zarr"):
        results.collect_data(cfg)
    assert not list(tmp_path.iterdir())  # refused before collecting anything
    twice[1].name = "reach-noisy"
    merged = results.collect_data(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "builtin_reach-2.zarr",
        "reach-noisy.zarr",
        "twice-merged.zarr",
    ]
    from vla.data.store import TrajectoryStore

    assert TrajectoryStore(merged).num_episodes == 4


def test_results_rebuilds_a_stale_merged_dataset(tmp_path, monkeypatch):
    """A merged dataset left by an earlier config (fewer demos) is rebuilt, not silently trained on."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import results

    from vla.data.store import TrajectoryStore

    def config(episodes: int) -> "results.ExperimentConfig":
        collect = [
            results.Collection(
                env=f"builtin/{kind}", episodes=episodes, overrides=["cameras=[top]", "image_size=32"]
            )
            for kind in ("push", "reach")
        ]
        return results.ExperimentConfig(name="suite", collect=collect, data_dir=str(tmp_path))

    merged = results.collect_data(config(1))
    assert TrajectoryStore(merged).num_episodes == 2
    assert results.merged_is_current(
        merged, [str(tmp_path / "builtin_push-1.zarr"), str(tmp_path / "builtin_reach-1.zarr")]
    )
    assert results.collect_data(config(2)) == merged
    store = TrajectoryStore(merged)
    assert store.num_episodes == 4 and sorted(set(store.tasks)) == ["builtin/push", "builtin/reach"]


@pytest.mark.slow
def test_serve_attack_keeps_honest_answers_correct_and_memory_flat():
    """Issue 25's attack: 8 honest clients beside one attacker of each kind (bomb, echo, garbage, flood, NaN,
    never-reading), each in its own process, against `vla serve`: every honest answer is exact, and the bounds
    are generous (the benchmark's own run, quoted in docs/serving.md, is the measurement)."""
    result = run_benchmark("serve_attack", "rounds=2", "seconds=2")
    assert result["honest_wrong"] == 0 and result["honest_failed"] == 0
    for r in result["rounds"]:
        assert r["server_alive"] and r["attacked"]["requests"] > 0
        assert all(n > 0 for n in r["attacker_frames"].values()), r["attacker_frames"]
        assert all(code == 0 for code in r["attacker_exit_codes"].values()), r["attacker_exit_codes"]
    assert result["worst_p99_ratio"] < 10
    assert result["rss_growth_after_round_1_mb"] < 100


def test_fast_path_eval_replays_the_same_episodes_on_both_paths(random_checkpoint):
    """benchmarks/fast_path_eval.py on a woken random checkpoint: the fast and the reference path act on
    the same seeds, so the outcomes agree and the executed actions differ by float rounding only."""
    result = run_benchmark(
        "fast_path_eval",
        f"checkpoint={random_checkpoint}",
        "episodes=2",
        "eval=['max_steps=12','num_envs=2']",
    )
    fast, reference = result["fast"], result["reference"]
    assert fast["episodes"] == reference["episodes"] == 2
    assert fast["successes"] == reference["successes"] and result["episodes_with_another_outcome"] == []
    assert 0 <= result["first_action_max_difference"] <= result["max_action_difference"] < 1e-4
    assert fast["chunk_median_ms"] > 0 and reference["chunk_median_ms"] > 0
