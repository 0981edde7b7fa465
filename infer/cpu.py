"""What this computer's processor does natively: its flags, its name, its bf16 units.

Why the processor matters: bf16 autocast is fast only where the hardware multiplies bf16
itself. A GPU does; on a CPU, Intel's AMX and AVX512-BF16 do. Without them PyTorch emulates
bf16 in fp32 registers and the model runs *slower* than plain fp32 (benchmarks/README.md), so inference there must not follow a GPU-trained checkpoint into
bf16. `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` make an AMX machine behave like an
AVX2 one, and this module honours them. Which precision follows from that is infer/precision.py's rule.
"""

import os
import platform
from functools import lru_cache

import torch

@lru_cache
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (Linux /proc/cpuinfo); empty where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_amx_bf16() -> bool:
    """Whether PyTorch will multiply bf16 on AMX tiles here (and not in emulation)."""
    if "amx_bf16" not in cpu_flags():
        return False
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):  # ATEN_CPU_CAPABILITY caps it
        return False
    onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return onednn_isa in ("ALL", "DEFAULT") or "AMX" in onednn_isa


def cpu_kind(threads: bool = True) -> str:
    """The processor and its widest vector/matrix unit PyTorch uses, for benchmark records:
    e.g. 'AMD EPYC (AVX2, 2 threads)'."""
    capability = torch.backends.cpu.get_cpu_capability()
    units = capability + ("+AMX" if cpu_has_amx_bf16() else "") + (
        "+BF16" if cpu_has_avx512_bf16() else "")
    return f"{cpu_name()} ({units}, {torch.get_num_threads()} threads)" if threads else f"{cpu_name()} ({units})"


def cpu_has_avx512_bf16() -> bool:
    """AVX-512 with its bf16 instructions (AMD Zen 4 and later, Intel Cooper Lake and later), in use."""
    return "avx512_bf16" in cpu_flags() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
