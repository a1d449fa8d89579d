"""What `train.mixed_precision: auto` means on the machine at hand.

bf16 autocast pays only where the hardware computes in bf16: CUDA GPUs from Ampere on, and CPUs
with AVX512-BF16 or AMX. Elsewhere bf16 is emulated, and on a CPU with AVX2 only we measured it
25-30x slower than fp32 (benchmarks/README.md), so `auto` trains in fp32 there.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 arithmetic (Linux: the flags in /proc/cpuinfo)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return False
        cpuinfo = path.read_text()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & _CPU_BF16_FLAGS)


def accelerate_device(use_cpu: bool) -> torch.device:
    """The device Accelerate will train on: CUDA where there is one, unless turned off."""
    return torch.device("cuda" if not use_cpu and torch.cuda.is_available() else "cpu")


def resolve_precision(requested: str, device: torch.device) -> str:
    """`requested` itself, or for `auto` bf16 where `device` computes in it and `no` elsewhere."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "no"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "no"
    return "no"
