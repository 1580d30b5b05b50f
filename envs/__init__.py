"""Simulated environments behind one gymnasium interface, and their scripted experts.

    env = envs.make("builtin/push", cameras=["top"], image_size=64, seed=0)
    obs, info = env.reset()   # obs = {"images": {cam: uint8 HxWx3}, "state": float32, "instruction": str}
    obs, reward, terminated, truncated, info = env.step(action)   # info["success"]: bool
    env.unwrapped.meta        # DatasetMeta: cameras, image size, dims, action bounds, fps

Suites: ``builtin/*`` (numpy, no simulator), ``robosuite/*`` and ``metaworld/*`` (the `sim` extra).
"""

from __future__ import annotations

from .registry import EnvSpec, make, names, register, spec
from .vector import make_vec


def list(suite: str | None = None) -> list[str]:  # noqa: A001 - `envs.list()` reads naturally
    """Names of the registered environments, optionally of one suite."""
    return names(suite)


for _task, _desc in (
    ("push", "push the named block onto the named pad (3 blocks, 3 pads; language picks the target)"),
    ("reach", "move the pusher to the named block (3 blocks)"),
):
    register(EnvSpec(f"builtin/{_task}", "envs.builtin.tabletop:TabletopEnv", _desc, (("kind", _task),)))

for _task, _desc in (
    ("Lift", "lift the red cube (Panda, OSC_POSE)"),
    ("Stack", "stack the red cube on the green cube"),
    ("PickPlaceCan", "pick up the can and place it in its bin"),
    ("NutAssemblySquare", "put the square nut on the square peg"),
    ("Door", "open the door"),
    ("LiftColor", "three coloured cubes; the instruction names the one to lift (language-conditioned)"),
):
    register(
        EnvSpec(
            f"robosuite/{_task}", "envs.robosuite_env:RobosuiteEnv", _desc, (("task", _task),), requires="sim"
        )
    )

_MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
for _task in _MT10:
    register(
        EnvSpec(
            f"metaworld/{_task}",
            "envs.metaworld_env:MetaWorldEnv",
            f"MetaWorld MT10: {_task}",
            (("task", _task),),
            requires="sim",
        )
    )

__all__ = ["EnvSpec", "list", "make", "make_vec", "names", "register", "spec"]
