"""robosuite and MetaWorld envs: real physics, real offscreen rendering, the shipped/scripted experts."""

import numpy as np
import pytest
from test_envs_builtin import check_contract, run_expert

import envs

# MetaWorld's scripted policies warn that their gains may exceed the action bounds (the env clips them)
pytestmark = pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high:UserWarning")


def rollout_random(env, steps=10):
    obs, info = env.reset(seed=0)
    check_contract(env, obs, info)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, _, _, _, info = env.step(rng.uniform(env.action_space.low, env.action_space.high))
    check_contract(env, obs, info)
    return obs


@pytest.mark.parametrize("task", ["Lift", "LiftColor"])
def test_robosuite_contract_with_rendering(task):
    env = envs.make(f"robosuite/{task}", cameras=["agentview", "robot0_eye_in_hand"], image_size=64)
    try:
        obs = rollout_random(env)
        for img in obs["images"].values():
            assert img.std() > 5  # a real render, not a blank frame
        meta = env.unwrapped.meta
        assert meta.action_dim == 7 and meta.state_dim == 9 and meta.robot == "panda"
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["Stack", "PickPlaceCan", "NutAssemblySquare", "Door"])
def test_robosuite_contract_other_tasks(task):
    env = envs.make(f"robosuite/{task}", cameras=["agentview"], image_size=48)
    try:
        rollout_random(env, steps=5)
    finally:
        env.close()


def test_robosuite_renders_each_camera_at_its_own_size_and_metaworld_refuses_mixed_sizes():
    sizes = {"agentview": (64, 80), "robot0_eye_in_hand": (32, 32)}
    env = envs.make("robosuite/Lift", cameras=list(sizes), image_size=sizes, seed=0)
    try:
        obs, _ = env.reset(seed=0)
        assert {cam: img.shape[:2] for cam, img in obs["images"].items()} == sizes
        assert env.unwrapped.meta.image_sizes == sizes
        assert all(img.std() > 5 for img in obs["images"].values())
        assert env.observation_space["images"]["robot0_eye_in_hand"].shape == (32, 32, 3)
    finally:
        env.close()
    with pytest.raises(ValueError, match="MetaWorld renders every camera at one size"):
        envs.make(
            "metaworld/reach-v3", cameras=["corner", "topview"], image_size={"corner": 32, "topview": 48}
        )


def test_robosuite_fast_rendering_is_upright_and_drops_the_costly_effects():
    """What "fast" turns off (multisampling, reflections, shadows); its speed-up is measured by
    benchmarks/env_speed.py, not timed here."""
    import mujoco

    fast = envs.make("robosuite/Lift", cameras=["agentview"], image_size=64, render_quality="fast")
    high = envs.make("robosuite/Lift", cameras=["agentview"], image_size=64, render_quality="high")
    try:
        frames = {}
        for label, env in (("fast", fast), ("high", high)):
            obs, _ = env.reset(seed=0)
            obs, *_ = env.step(np.zeros(7))
            img = frames[label] = obs["images"]["agentview"].astype(float)
            # OpenCV convention: the bright table fills the lower half, the robot's dark base the top
            assert img[40:].mean() > img[:8].mean()
        flags = {
            label: env.unwrapped.sim_env.sim._render_context_offscreen.scn.flags
            for label, env in (("fast", fast), ("high", high))
        }
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            assert flags["fast"][flag] == 0 and flags["high"][flag] == 1
        assert fast.unwrapped.sim_env.sim.model.vis.quality.offsamples == 0
        assert high.unwrapped.sim_env.sim.model.vis.quality.offsamples > 0
        assert np.abs(frames["fast"] - frames["high"]).mean() > 1  # the same scene, rendered differently
    finally:
        fast.close()
        high.close()


def test_language_conditioned_robosuite_target():
    env = envs.make("robosuite/LiftColor", cameras=[])
    try:
        targets = set()
        for seed in range(12):
            obs, info = env.reset(seed=seed)
            assert obs["instruction"] == f"lift the {info['target']} cube"
            targets.add(info["target"])
        assert targets == {"red", "green", "blue"}
        obs, info = env.reset(seed=0, options={"target": "blue"})
        assert info["target"] == "blue" and "blue" in obs["instruction"]
    finally:
        env.close()


@pytest.mark.parametrize("task, episodes", [("Lift", 5), ("LiftColor", 6), ("Stack", 3)])
def test_robosuite_expert(task, episodes):
    env = envs.make(f"robosuite/{task}", cameras=[])
    try:
        assert all(run_expert(env, range(episodes)))
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, episodes, minimum", [("PickPlaceCan", 3, 3), ("Door", 5, 5), ("NutAssemblySquare", 10, 9)]
)
def test_robosuite_slow_experts(task, episodes, minimum):
    env = envs.make(f"robosuite/{task}", cameras=[])
    try:
        assert sum(run_expert(env, range(episodes))) >= minimum
    finally:
        env.close()


def test_metaworld_contract_with_rendering():
    env = envs.make("metaworld/drawer-open-v3", cameras=["corner"], image_size=64)
    try:
        obs = rollout_random(env)
        assert obs["images"]["corner"].std() > 5
        assert env.unwrapped.meta.action_dim == 4
    finally:
        env.close()


@pytest.mark.parametrize("task", envs.list("metaworld"))
def test_metaworld_shipped_expert(task):
    env = envs.make(task, cameras=[])
    try:
        assert sum(run_expert(env, range(3))) >= 2
    finally:
        env.close()


@pytest.mark.parametrize("name", ["robosuite/LiftColor", "metaworld/door-open-v3"])
def test_seed_fixes_the_episode_across_instances(name):
    a, b = envs.make(name, cameras=[]), envs.make(name, cameras=[])
    try:
        b.reset(seed=123)  # a different history must not matter
        np.random.seed(7)  # nor numpy's global generator
        for seed in (0, 1):
            oa, ia = a.reset(seed=seed)
            ob, ib = b.reset(seed=seed)
            np.testing.assert_allclose(oa["state"], ob["state"], atol=1e-6)
            assert oa["instruction"] == ob["instruction"]
            if name.startswith("metaworld"):
                np.testing.assert_allclose(a.unwrapped.raw_obs, b.unwrapped.raw_obs, atol=1e-6)
            else:
                sim_a, sim_b = a.unwrapped.sim_env.sim.data, b.unwrapped.sim_env.sim.data
                np.testing.assert_allclose(sim_a.qpos, sim_b.qpos, atol=1e-6)
    finally:
        a.close()
        b.close()
