"""The built-in tabletop suite: observation contract, physics, language, expert, vector envs."""

import numpy as np
import pytest

import envs
from envs.experts import make_expert


def check_contract(env, obs, info=None):
    meta = env.unwrapped.meta
    assert set(obs) == {"images", "state", "instruction"}
    assert list(obs["images"]) == meta.cameras
    for img in obs["images"].values():
        assert img.dtype == np.uint8 and img.shape == (*meta.image_size, 3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (meta.state_dim,)
    assert isinstance(obs["instruction"], str) and obs["instruction"]
    assert env.action_space.shape == (meta.action_dim,)
    np.testing.assert_allclose(env.action_space.low, meta.action_space.low)
    if info is not None:
        assert isinstance(info["success"], bool)


def run_expert(env, seeds):
    expert = make_expert(env)
    results = []
    for seed in seeds:
        env.reset(seed=seed)
        expert.reset()
        while True:
            _, _, terminated, truncated, info = env.step(expert.act())
            if terminated or truncated:
                break
        results.append(info["success"])
    return results


def test_registry_lists_suites():
    names = envs.list()
    assert {
        "builtin/push",
        "builtin/reach",
        "robosuite/Lift",
        "robosuite/LiftColor",
        "metaworld/reach-v3",
    } <= set(names)
    assert envs.list("builtin") == ["builtin/push", "builtin/reach"]
    assert len(envs.list("metaworld")) == 10
    with pytest.raises(KeyError, match="unknown environment 'builtin/nope'; available: builtin/push"):
        envs.make("builtin/nope")
    with pytest.raises(TypeError, match=r"does not take option\(s\) \['colour'\]"):
        envs.make("builtin/push", colour="red")


@pytest.mark.parametrize("name", ["builtin/push", "builtin/reach"])
def test_contract_and_random_steps(name):
    env = envs.make(name, cameras=["top", "wrist"], image_size=72, seed=0)
    obs, info = env.reset(seed=3)
    check_contract(env, obs, info)
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 2))
        check_contract(env, obs, info)
        assert 0.0 <= obs["state"][0] <= 1.0 and 0.0 <= obs["state"][1] <= 1.0
        if terminated or truncated:
            break


def test_instruction_names_the_target_and_seed_reproduces():
    env = envs.make("builtin/push")
    obs, info = env.reset(seed=5)
    assert obs["instruction"] == f"push the {info['target_block']} block onto the {info['target_pad']} pad"
    again, _ = envs.make("builtin/push").reset(seed=5)
    np.testing.assert_array_equal(obs["images"]["top"], again["images"]["top"])
    assert obs["instruction"] == again["instruction"]
    instructions = {envs.make("builtin/push").reset(seed=s)[0]["instruction"] for s in range(20)}
    assert len(instructions) > 5  # the target varies per episode
    obs, info = env.reset(seed=5, options={"target_block": env.unwrapped.block_colors[0]})
    assert info["target_block"] == env.unwrapped.block_colors[0]


def test_target_block_is_drawn_where_the_state_says():
    env = envs.make("builtin/push", image_size=64)
    obs, _ = env.reset(seed=1)
    base = env.unwrapped
    from envs.builtin.tabletop import COLORS

    x, y = base.blocks[base.target_block]
    px, py = int(x * 64), int(y * 64)
    assert tuple(obs["images"]["top"][py, px]) == COLORS[base.block_colors[base.target_block]]
    # the training targets point at the named block and the named pad (its ring is drawn in the pad's colour)
    block_x, block_y, pad_x, pad_y = base.training_targets()
    assert (block_x, block_y) == pytest.approx((x, y)) and base.meta.target_names == [
        "block_x",
        "block_y",
        "goal_x",
        "goal_y",
    ]
    ring_x = int((pad_x + base.pad_half * 0.9) * 64)
    assert tuple(obs["images"]["top"][int(pad_y * 64), ring_x]) == COLORS[base.pad_colors[base.target_pad]]
    # reach names no pad: its goal is the block itself
    reach = envs.make("builtin/reach").unwrapped
    reach.reset(seed=1)
    np.testing.assert_array_equal(
        reach.training_targets()[2:], reach.blocks[reach.target_block].astype(np.float32)
    )


def test_pushing_moves_a_block():
    env = envs.make("builtin/push")
    env.reset(seed=0)
    base = env.unwrapped
    base.pusher = base.blocks[0] - [0.1, 0.0]
    start = base.blocks[0].copy()
    for _ in range(5):
        env.step(np.array([1.0, 0.0]))
    assert base.blocks[0][0] > start[0] + 0.05 and abs(base.blocks[0][1] - start[1]) < 1e-6


@pytest.mark.parametrize("name, minimum", [("builtin/push", 0.98), ("builtin/reach", 0.98)])
def test_expert_success_rate(name, minimum):
    results = run_expert(envs.make(name, cameras=[]), range(200))
    assert np.mean(results) >= minimum, np.mean(results)


def test_expert_with_noise_still_succeeds():
    from envs.experts import add_noise

    env = envs.make("builtin/push", cameras=[])
    expert = make_expert(env)
    rng = np.random.default_rng(0)
    wins = 0
    for seed in range(30):
        env.reset(seed=seed)
        expert.reset()
        while True:
            action = add_noise(expert.act(), 0.2, rng, env.action_space.low, env.action_space.high)
            assert (np.abs(action) <= 1).all()
            _, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        wins += info["success"]
    assert wins >= 27


def test_vector_env_spawn():
    vec = envs.make_vec("builtin/push", 2, cameras=["top"], image_size=32)
    try:
        obs, info = vec.reset(seed=10)
        assert obs["images"]["top"].shape == (2, 32, 32, 3) and obs["state"].shape == (2, 4)
        assert len(obs["instruction"]) == 2
        single, _ = envs.make("builtin/push", image_size=32).reset(seed=11)
        np.testing.assert_array_equal(obs["images"]["top"][1], single["images"]["top"])  # env i gets seed + i
        obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 2), np.float32))
        assert info["success"].shape == (2,)
    finally:
        vec.close()
