"""What the machine can do: the CPU's name and instruction sets, and the dtype choices that follow from them.

bfloat16 is fast on a CPU only where it has native bf16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm's BF16
extension); elsewhere torch emulates it, and EfficientNet-Lite0 ran 15x slower than in float32 on an AVX2-only
AMD EPYC (issue 28). Every timing the project publishes names the CPU it was measured on (``cpu_info``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

# /proc/cpuinfo flags (x86 `flags`, Arm `Features`) that mean native bfloat16 arithmetic
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    info = _cpuinfo()
    return (
        info.get("model name") or info.get("Model") or platform.processor() or platform.machine() or "unknown"
    )


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def native_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 instruction sets (empty where it has none, or where they cannot be read)."""
    flags = cpu_flags()
    return [f for f in BF16_FLAGS if f in flags]


# instruction-set caps below bf16 (torch's ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA): set, this CPU
# computes as an older one, and bfloat16 would be emulated even where /proc/cpuinfo lists bf16 instructions
ATEN_CAPS_WITHOUT_BF16 = ("default", "avx2")
ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def isa_cap_without_bf16() -> str | None:
    """The environment's instruction-set cap that rules native bfloat16 out (``NAME=value``), or None."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
    if aten.lower() in ATEN_CAPS_WITHOUT_BF16:
        return f"ATEN_CPU_CAPABILITY={aten}"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip()
    if onednn.upper() in ONEDNN_CAPS_WITHOUT_BF16:
        return f"ONEDNN_MAX_CPU_ISA={onednn}"
    return None


def cpu_info() -> dict[str, object]:
    """The CPU as every benchmark and results summary records it."""
    return {
        "cpu": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16_flags(),
        "isa_cap": isa_cap_without_bf16(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def pick_vision_dtype(requested: str, trainable: bool) -> tuple[str, str]:
    """``backbone.vision_dtype`` -> (dtype, why). ``auto`` picks bfloat16 for a frozen encoder where the GPU
    or the CPU computes it natively, float32 elsewhere; ``float32`` and ``bfloat16`` are taken as given."""
    if requested != "auto":
        return requested, "set in the config"
    if trainable:
        return (
            "float32",
            "the vision encoder is trained (finetune is not frozen), which needs float32 weights",
        )
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"the GPU ({torch.cuda.get_device_name()}) computes bfloat16 natively"
        return "float32", f"the GPU ({torch.cuda.get_device_name()}) has no native bfloat16"
    native = native_bf16_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    cap = isa_cap_without_bf16()
    if native and cap:
        return "float32", (
            f"the CPU ({cpu_model()}) has native bf16 instructions ({', '.join(native)}), but {cap} caps "
            "the instruction sets below them: bfloat16 would be emulated"
        )
    if native:
        return "bfloat16", f"the CPU ({cpu_model()}) has native bf16 instructions ({', '.join(native)})"
    return "float32", (
        f"the CPU ({cpu_model()}, torch capability {capability}) has no native bf16 instructions: "
        "bfloat16 would be emulated, many times slower than float32"
    )


def acting_threads(batch: int) -> int | None:
    """Intra-op threads for one chunk of ``batch`` observations (``Policy.act_threads = "auto"``): one at
    batch 1 where OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE``, as the Makefile sets it), else None
    (torch's setting). A batch-1 chunk of the small preset is a few hundred small ops, and under passive
    waiting every parallel op pays a thread wake-up: on 2 cores it took 40.2 ms on two threads and 12.6 ms on
    one (docs/figures/peer_latency_threads.json)."""
    if batch == 1 and os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        return 1
    return None


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (None: left as it is), then
    restored."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
