"""`vla eval`: the expert reaches its success rate, reports/plots/videos are written, runs repeat exactly."""

import json

import imageio.v3 as iio
import pytest

from vla.cli import main
from vla.eval import EvalConfig, evaluate, wilson


def test_wilson():
    lo, hi = wilson(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.94
    lo, hi = wilson(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17


def test_expert_reference_row(tmp_path):
    report = evaluate(
        EvalConfig(
            expert=True,
            env=["builtin/push", "builtin/reach"],
            episodes=30,
            num_envs=4,
            out=str(tmp_path),
            videos=1,
        ),
        progress=False,
    )
    for task in ("builtin/push", "builtin/reach"):
        assert report["tasks"][task]["success_rate"] >= 0.98
        assert [r["seed"] for r in report["tasks"][task]["results"]] == list(range(30))
    assert (tmp_path / "eval.json").exists() and "| builtin/push | 30/30" in (
        tmp_path / "eval.md"
    ).read_text()
    assert iio.imread(tmp_path / "success.png").shape[2] in (3, 4)
    video = next((tmp_path / "videos" / "builtin_push").glob("seed0_success.mp4"))
    assert iio.imread(video).shape[0] == report["tasks"]["builtin/push"]["results"][0]["length"]


def test_random_tiny_policy_end_to_end_and_repeatable(random_checkpoint, tmp_path):
    cfg = dict(checkpoint=random_checkpoint, episodes=6, max_steps=12, videos=1)
    a = evaluate(EvalConfig(**cfg, num_envs=3, out=str(tmp_path / "a")), progress=False)
    b = evaluate(
        EvalConfig(**cfg, num_envs=2, vectorization="async", out=str(tmp_path / "b")), progress=False
    )
    ra, rb = a["tasks"]["builtin/push"], b["tasks"]["builtin/push"]
    assert ra["results"] == rb["results"]  # same seeds, other batching and backend: identical episodes
    assert ra["latency_ms"]["median"] > 0 and (tmp_path / "a" / "success.png").exists()
    (video,) = (tmp_path / "a" / "videos" / "builtin_push").glob("seed0_*.mp4")
    assert iio.imread(video).shape[0] == ra["results"][0]["length"]  # decodes, one frame per step
    c = evaluate(
        EvalConfig(
            **cfg, strategy="ensemble", instruction_swap=True, vision_steps=8, out=str(tmp_path / "c")
        ),
        progress=False,
    )
    assert all(r["instruction"].startswith("push the ") for r in c["tasks"]["builtin/push"]["results"])
    d = evaluate(EvalConfig(**cfg, strategy="rtc", rtc_delay=2, out=str(tmp_path / "d")), progress=False)
    assert len(d["tasks"]["builtin/push"]["results"]) == 6


def test_eval_errors(random_checkpoint, tmp_path, capsys):
    with pytest.raises(ValueError, match="checkpoint=<dir> is required"):
        EvalConfig()
    with pytest.raises(ValueError, match="noise_scale .* must be >= 0, got -0.5"):
        EvalConfig(expert=True, noise_scale=-0.5)
    assert main(["eval", f"checkpoint={random_checkpoint}", "env=builtin/nope", f"out={tmp_path}"]) == 2
    assert "unknown environment 'builtin/nope'" in capsys.readouterr().err
    with pytest.raises(Exception, match="does not match the checkpoint: action dim 4 vs 2"):
        evaluate(
            EvalConfig(checkpoint=random_checkpoint, env="metaworld/reach-v3", episodes=1, out=str(tmp_path)),
            progress=False,
        )
    report = json.loads(
        json.dumps(
            evaluate(
                EvalConfig(expert=True, env="builtin/reach", episodes=2, out=str(tmp_path), videos=0),
                progress=False,
            )
        )
    )
    assert report["tasks"]["builtin/reach"]["episodes"] == 2


@pytest.mark.slow
def test_ray_backend_agrees_with_vector_envs(random_checkpoint, tmp_path):
    pytest.importorskip("ray")
    import ray

    cfg = dict(checkpoint=random_checkpoint, episodes=4, max_steps=10, videos=0, num_envs=2)
    vector = evaluate(EvalConfig(**cfg, out=str(tmp_path / "v")), progress=False)
    try:
        distributed = evaluate(EvalConfig(**cfg, backend="ray", out=str(tmp_path / "r")), progress=False)
    finally:
        ray.shutdown()
    assert distributed["tasks"]["builtin/push"]["results"] == vector["tasks"]["builtin/push"]["results"]
