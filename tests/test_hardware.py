"""The dtype choice follows the CPU: its flags are read for real, and a forced dtype is honoured."""

import logging
from pathlib import Path

import pytest
import torch

from vla import hardware
from vla.models import Policy, PolicyConfig


def test_cpu_info_reads_this_machine():
    info = hardware.cpu_info()
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["cpu"], str) and info["cpu"] and info["cpu"] != "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the flags are this machine's own
        text = cpuinfo.read_text()
        assert info["cpu"] in text
        line = next(line for line in text.splitlines() if line.startswith(("flags", "Features")))
        flags = line.split(":", 1)[1].split()
        assert info["native_bf16"] == [f for f in hardware.BF16_FLAGS if f in flags]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule; a GPU machine answers from the GPU")
def test_auto_picks_bfloat16_only_where_the_cpu_has_native_bf16():
    dtype, why = hardware.pick_vision_dtype("auto", trainable=False)
    native = hardware.native_bf16_flags()
    assert dtype == ("bfloat16" if native else "float32")
    assert hardware.cpu_model() in why
    # a trained encoder needs float32
    assert hardware.pick_vision_dtype("auto", trainable=True)[0] == "float32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule")
def test_auto_on_an_avx2_only_cpu_picks_float32(monkeypatch):
    """The AVX2-only AMD EPYC of issue 28, whose flags this machine may not have: /proc/cpuinfo as that CPU
    has it."""
    epyc = {"model name": "AMD EPYC 7B13", "flags": "fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2"}
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: epyc)
    dtype, why = hardware.pick_vision_dtype("auto", trainable=False)
    assert dtype == "float32" and "AMD EPYC 7B13" in why and "no native bf16" in why
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: {**epyc, "flags": epyc["flags"] + " avx512_bf16"})
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert hardware.pick_vision_dtype("auto", trainable=False)[0] == "bfloat16"
    # a CPU with bf16 capped to AVX2 (how benchmarks/peer_latency.py measures "a CPU without bf16") computes
    # as one without it
    for name, value in (("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")):
        monkeypatch.setenv(name, value)
        dtype, why = hardware.pick_vision_dtype("auto", trainable=False)
        assert dtype == "float32" and f"{name}={value} caps" in why
        assert hardware.cpu_info()["isa_cap"] == f"{name}={value}"
        monkeypatch.delenv(name)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # a cap above bf16 keeps it
    assert hardware.pick_vision_dtype("auto", trainable=False)[0] == "bfloat16"


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_a_forced_vision_dtype_is_honoured_and_logged(forced, caplog):
    from vla.data import ActionSpace, DatasetMeta, Normalizer

    meta = DatasetMeta(
        fps=10,
        cameras=["top"],
        image_size=(32, 32),
        state_dim=2,
        action_space=ActionSpace(dim=2, low=[-1, -1], high=[1, 1], kind="delta_ee"),
    )
    cfg = PolicyConfig()
    cfg.backbone.finetune, cfg.backbone.vision_dtype = "frozen", forced
    with caplog.at_level(logging.INFO, logger="vla"):
        policy = Policy(cfg, meta, Normalizer.identity({"state": 2, "action": 2}))
    assert {p.dtype for p in policy.backbone.vision.parameters()} == {getattr(torch, forced)}
    assert f"vision encoder in {forced}: set in the config" in caplog.text
    cfg.backbone.vision_dtype = "auto"
    with caplog.at_level(logging.INFO, logger="vla"):
        auto = Policy(cfg, meta, Normalizer.identity({"state": 2, "action": 2}))
    picked, why = hardware.pick_vision_dtype("auto", trainable=False)
    assert {p.dtype for p in auto.backbone.vision.parameters()} == {getattr(torch, picked)}
    assert f"vision encoder in {picked}: {why}" in caplog.text
