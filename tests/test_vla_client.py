"""The robot-side package `vla_client` stays thin: it imports neither torch, zarr, transformers nor `vla`,
and `vla` reuses it (one copy of the protocol and the executors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vla_client

import vla.control
import vla.serve
import vla.serve.protocol

HEAVY = ("torch", "zarr", "transformers", "vla", "diffusers", "envs", "mujoco", "robosuite")


def test_the_robot_side_imports_nothing_heavy():
    probe = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "import vla_client, vla_client.loop, vla_client.safety, vla_client.client, vla_client.adapters\n"
        "from vla_client.adapters import lerobot\n"
        "print(time.perf_counter() - start)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.split("\n")
    assert out[1] == "[]", out
    assert float(out[0]) < 2.0  # `import vla.serve.control_loop` took 3.5 s with torch and zarr


def test_vla_reuses_the_robot_side_package():
    """One copy: the names vla exports are vla_client's objects, and its package sits outside `vla/`."""
    assert vla.serve.RobotClient is vla_client.RobotClient
    assert vla.serve.ControlLoop is vla_client.ControlLoop
    assert vla.serve.protocol.packb is vla_client.packb
    assert vla.control.RecedingHorizon is vla_client.RecedingHorizon
    package = Path(vla_client.__file__).parent
    assert package.name == "vla_client" and Path(vla.__file__).parent not in package.parents
    metadata = subprocess.run(
        [sys.executable, "-m", "pip", "show", "vla-client"], capture_output=True, text=True, check=True
    ).stdout
    assert "Requires: msgpack, numpy, websockets" in metadata
