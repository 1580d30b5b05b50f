"""Policy: heads overfit a fixed batch, sampling schedules, prefix cache, checkpoints, mismatches."""

import warnings

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from envs.collect import CollectConfig, collect
from vla.config import config_dir, to_object
from vla.data import Normalizer, SchemaError, TrajectoryStore, WindowConfig, WindowDataset, ensure_stats
from vla.models import Policy, PolicyConfig, load_policy
from vla.models.backbone import pool_tokens

warnings.filterwarnings("ignore", category=UserWarning)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Real built-in demos (6 episodes), their normalizer and one fixed batch of 4 windows."""
    out = str(tmp_path_factory.mktemp("demo") / "push.zarr")
    collect(CollectConfig(episodes=6, out=out, image_size=32, videos=0), progress=False)
    store = TrajectoryStore(out)
    cfg = PolicyConfig()
    normalizer = Normalizer.from_stats(ensure_stats(out), cfg.normalization)
    windows = WindowDataset(store, WindowConfig(n_obs_steps=1, horizon=cfg.horizon, future_offset=cfg.horizon))
    batch = next(iter(DataLoader(windows, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    return store, normalizer, batch


def make_policy(demo, kind="dual_stream", seed=0):
    store, normalizer, _ = demo
    torch.manual_seed(seed)
    cfg = PolicyConfig()
    cfg.head.kind = kind
    return Policy(cfg, store.meta, normalizer)


def obs_from(batch, n=2):
    return {"images": {"top": batch["images"]["top"][:n, -1].numpy()}, "state": batch["state"][:n, -1].numpy(),
            "instruction": list(batch["instruction"][:n])}


@pytest.mark.parametrize("kind, steps", [("dual_stream", 150), ("flow", 100), ("diffusion", 100)])
def test_head_overfits_a_fixed_batch(demo, kind, steps):
    policy = make_policy(demo, kind)
    batch = demo[2]
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    history = []
    for i in range(steps):
        torch.manual_seed(i % 2)  # two fixed noise draws: the same small problem every step
        out = policy.compute_loss(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    first, last = history[0], {k: np.mean([h[k] for h in history[-5:]]) for k in history[-1]}
    assert last["loss_action"] < first["loss_action"] / 10, (first, last)
    if kind == "dual_stream":
        assert last["loss_vision"] < first["loss_vision"] / 5, (first, last)


@pytest.mark.parametrize("kind", ["dual_stream", "flow", "diffusion"])
def test_predict_chunk_shape_dtype_bounds(demo, kind):
    policy = make_policy(demo, kind).eval()
    chunk = policy.predict_chunk(obs_from(demo[2], 3), generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 8, 2) and chunk.dtype == np.float32
    assert (chunk >= -1).all() and (chunk <= 1).all()  # clamped to the action bounds
    single = {"images": {"top": demo[2]["images"]["top"][0, -1].numpy()}, "state": demo[2]["state"][0, -1].numpy(),
              "instruction": demo[2]["instruction"][0]}
    assert policy.predict_chunk(single).shape == (1, 8, 2)


@pytest.mark.parametrize("n_a, n_o, expected", [(4, 4, (4, 4)), (4, 16, (4, 16)), (2, 8, (2, 8)), (4, 0, (4, 0))])
def test_async_schedule_counts(demo, n_a, n_o, expected):
    policy = make_policy(demo).eval()
    policy.predict_chunk(obs_from(demo[2]), action_steps=n_a, vision_steps=n_o)
    assert (policy.head.sample_counts["action"], policy.head.sample_counts["vision"]) == expected
    with pytest.raises(ValueError, match="multiple of action_steps"):
        policy.predict_chunk(obs_from(demo[2]), action_steps=4, vision_steps=6)


def test_cached_prefix_matches_recomputed(demo):
    policy = make_policy(demo).eval()
    obs = obs_from(demo[2])
    images, state, instructions = policy._inputs(obs["images"], obs["state"], obs["instruction"])
    prefix = policy.backbone(images, instructions)
    cached = policy.head.sample(prefix, state, generator=torch.Generator().manual_seed(3))

    class Uncached(type(policy.head)):  # recompute the prefix keys/values at every denoising step
        def velocity(self, cache, *args, **kwargs):
            return super().velocity(self.prefix_cache(policy.backbone(images, instructions)), *args, **kwargs)

    policy.head.__class__ = Uncached
    try:
        uncached = policy.head.sample(prefix, state, generator=torch.Generator().manual_seed(3))
    finally:
        policy.head.__class__ = Uncached.__mro__[1]
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["dual_stream", "diffusion"])
def test_checkpoint_round_trip_is_exact(demo, tmp_path, kind):
    policy = make_policy(demo, kind).eval()
    policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.yaml", "meta.json", "model.safetensors",
                                                                    "norm_stats.json"]
    loaded = load_policy(tmp_path / "ckpt")
    obs = obs_from(demo[2])
    a = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    b = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(a, b)
    assert loaded.config == policy.config and loaded.meta == policy.meta


def test_mismatch_errors(demo, tmp_path):
    store = demo[0]
    policy = make_policy(demo).eval()
    policy.save(tmp_path / "ckpt")
    other = type(store.meta)(**{**store.meta.__dict__, "cameras": ["top", "wrist"]})
    with pytest.raises(SchemaError, match=r"cameras \['top', 'wrist'\] vs \['top'\]"):
        load_policy(tmp_path / "ckpt", expect=other)
    with pytest.raises(SchemaError, match="observation lacks cameras"):
        policy.predict_chunk({"images": {}, "state": np.zeros((1, 4)), "instruction": ["x"]})
    with pytest.raises(SchemaError, match="state has dim 3, the policy expects 4"):
        policy.predict_chunk({"images": {"top": np.zeros((1, 32, 32, 3), np.uint8)}, "state": np.zeros((1, 3)),
                              "instruction": ["x"]})
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        (tmp_path / "ckpt" / "model.safetensors").unlink()
        load_policy(tmp_path / "ckpt")


def test_transformers_encoders_round_trip_offline(tmp_path, demo):
    """The real loading path: tiny encoders saved with save_pretrained, loaded by local path."""
    from transformers import BertConfig, BertModel, ByT5Tokenizer, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=32, patch_size=8))
    tokenizer = ByT5Tokenizer()
    text = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2), add_pooling_layer=False)
    vision.eval(), text.eval()  # no dropout in the reference outputs
    vision.save_pretrained(tmp_path / "vision")
    text.save_pretrained(tmp_path / "text")
    tokenizer.save_pretrained(tmp_path / "text")
    cfg = PolicyConfig()
    cfg.backbone.vision_path, cfg.backbone.text_path = str(tmp_path / "vision"), str(tmp_path / "text")
    policy = Policy(cfg, demo[0].meta, demo[1]).eval()
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    expected = vision(pixel_values=x.permute(0, 3, 1, 2).float() / 127.5 - 1).last_hidden_state
    torch.testing.assert_close(policy.backbone.image_features(x), expected)
    enc = tokenizer(["push the red block"], return_tensors="pt")
    torch.testing.assert_close(policy.backbone.text(**enc).last_hidden_state, text(**enc).last_hidden_state)


def test_pool_tokens_and_yaml_preset():
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    pooled = pool_tokens(x, 4)
    assert pooled.shape == (2, 4, 3)
    torch.testing.assert_close(pooled[0, 0], x[0, [0, 1, 4, 5]].mean(0))
    with pytest.raises(ValueError, match="square grids"):
        pool_tokens(x, 3)
    preset = yaml.safe_load((config_dir() / "policy" / "tiny.yaml").read_text())
    assert to_object(preset, PolicyConfig) == PolicyConfig()
