"""The `vla` command: help, data verbs on real datasets, hydra overrides and their errors."""

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from vla.cli import main
from vla.config import ConfigError, compose, config_dir, to_object
from vla.data.config import DataConfig


def test_entry_point_help():
    exe = Path(sys.executable).parent / "vla"  # the venv's console script, whether or not it is on PATH
    assert exe.exists(), "the `vla` console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("collect", "train", "eval", "serve", "robot", "data", "bench"):
        assert verb in out
    out = subprocess.run([exe, "data", "info", "--help"], capture_output=True, text=True, check=True).stdout
    assert "dataset URL" in out


def test_data_info_json(dataset, capsys):
    assert main(["data", "info", str(dataset), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 5 and info["frames"] == 20 and info["cameras"] == ["front", "wrist"]
    assert main(["data", "info", str(dataset)]) == 0
    assert "episodes / frames" in capsys.readouterr().out


def test_data_stats_writes_into_dataset(dataset, capsys):
    assert main(["data", "stats", str(dataset), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["action"]["max"] == [19.0, 0.0]
    main(["data", "info", str(dataset), "--json"])
    assert json.loads(capsys.readouterr().out)["stats"] == "up to date"


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "none.zarr")]) == 2
    assert "no Zarr dataset at" in capsys.readouterr().err


def test_config_errors_and_cfg_printing(capsys, monkeypatch):
    assert main(["serve"]) == 2
    assert "checkpoint=<dir> is required" in capsys.readouterr().err
    assert main(["serve", "nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    monkeypatch.setenv("VLA_API_KEY", "from-env")
    assert main(["serve", "--cfg", "port=9000"]) == 0
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg["port"] == 9000 and cfg["host"] == "127.0.0.1"
    assert "from-env" not in printed  # --cfg shows where the key comes from, never the key
    from vla.serve import ServeConfig

    assert to_object(compose("serve", ["checkpoint=x"]), ServeConfig).api_key == "from-env"
    assert to_object(compose("serve", ["checkpoint=x", "api_key=given"]), ServeConfig).api_key == "given"
    monkeypatch.setenv("VLA_API_KEY", "")
    assert to_object(compose("serve", ["checkpoint=x"]), ServeConfig).api_key is None  # empty: no key
    monkeypatch.delenv("VLA_API_KEY")
    assert to_object(compose("serve", ["checkpoint=x"]), ServeConfig).api_key is None
    assert main(["train", "--cfg", "data.horizon=4", "out=runs/x", "policy=small"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["horizon"] == 4 and cfg["out"] == "runs/x" and cfg["policy"]["name"] == "small"


def test_unknown_and_mistyped_overrides(capsys):
    assert main(["train", "data.horizn=4"]) == 2
    assert "data.horizn" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="could not be converted to Integer"):
        to_object(compose("train", ["data.horizon=abc"]).data, DataConfig)
    with pytest.raises(ConfigError, match="n_obs_steps must be >= 1"):
        to_object(compose("train", ["data.n_obs_steps=0"]).data, DataConfig)


def test_yaml_mirrors_dataclass():
    cfg = yaml.safe_load((config_dir() / "data" / "default.yaml").read_text())
    assert set(cfg) == {f.name for f in fields(DataConfig)}
    assert to_object(compose("train").data, DataConfig) == DataConfig()
