"""The wheel, installed without the checkout: configs ship inside it and every verb runs from any
directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv holding only the built wheel; its dependencies come from this venv's site-packages through
    a ``.pth`` line (no download), and the checkout is on no path."""
    root = tmp_path_factory.mktemp("wheel")
    source, dist = root / "source", root / "dist"
    # a copy of what the wheel is built from: pip builds in the source tree, and a stale build/ there would
    # leak
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("vla", "envs", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # the robot-side package is its own distribution, which vla depends on: built and installed beside it
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
        + [str(REPO / "packages" / "vla-client")],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next(dist.glob("vla-0*.whl"))
    client_wheel = next(dist.glob("vla_client-*.whl"))
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # lines of a .pth are added to sys.path, but the .pth files found there (this venv's editable-install
    # finder for the checkout) are not run: only the wheel's vla is importable
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
            str(client_wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLA_CONFIG_DIR")}
    return {"python": python, "vla": env_dir / "bin" / "vla", "work": work, "env": env, "site": site}


def run(installed: dict, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(installed["vla"]), *args],
        cwd=installed["work"],
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"vla {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def test_the_wheel_carries_its_configs_and_not_the_checkout(installed):
    probe = "import vla, vla.config; print(vla.__file__); print(vla.config.config_dir())"
    out = subprocess.run(
        [installed["python"], "-c", probe],
        cwd=installed["work"],
        env=installed["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert Path(out[0]).is_relative_to(installed["site"]), out  # the installed copy, not the checkout
    assert Path(out[1]) == installed["site"] / "vla" / "_configs"
    shipped = {p.relative_to(out[1]).as_posix() for p in Path(out[1]).rglob("*.yaml")}
    in_checkout = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == in_checkout


def test_installed_verbs_compose_their_configs_from_any_directory(installed):
    for verb in ("collect", "train", "eval", "serve", "robot"):
        assert run(installed, verb, "--cfg").strip(), verb
    assert "name: small" in run(installed, "train", "policy=small", "--cfg")
    # the benchmarks stay in the checkout: `vla bench` says so instead of failing obscurely
    bench = subprocess.run(
        [str(installed["vla"]), "bench", "--list"],
        cwd=installed["work"],
        env=installed["env"],
        capture_output=True,
        text=True,
    )
    assert bench.returncode == 2 and "the wheel does not ship" in bench.stderr


@pytest.mark.slow
def test_installed_wheel_collects_trains_and_evaluates(installed):
    run(installed, "collect", "env=builtin/push", "episodes=4", "cameras=[top]", "out=demo.zarr")
    run(
        installed,
        "train",
        "data.path=demo.zarr",
        "out=run",
        "trainer.steps=2",
        "trainer.batch_size=4",
        "trainer.checkpoint_every=2",
        "trainer.val_every=2",
        "trainer.logger=none",
        "data.val_fraction=0",
    )
    checkpoint = installed["work"] / "run" / "checkpoints" / "step_000002"
    assert (checkpoint / "model.safetensors").is_file()
    run(installed, "eval", f"checkpoint={checkpoint}", "episodes=2", "max_steps=5", "videos=0", "out=eval")
    assert "builtin/push" in (installed["work"] / "eval" / "eval.md").read_text()
