"""Which device to run on, and what its processor does natively. One place for both rules.

Why the processor matters: bf16 autocast is fast only where the hardware multiplies bf16
itself. A GPU does; on a CPU, Intel's AMX does (about 3.5x fp32 for ViT-B). Without it PyTorch
emulates bf16 in fp32 registers and the model runs *slower* than plain fp32 (measured 4x
slower on an AVX2-only CPU), so inference there must not follow a GPU-trained checkpoint into
bf16. `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` make an AMX machine behave like an
AVX2 one, and this module honours them.
"""

import os
import platform
from functools import lru_cache

import torch

# Precision names (the --amp flag's values) -> the dtype torch.autocast runs in (None: plain fp32).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the GPU when there is one, else the CPU; 'cpu', 'cuda', 'cuda:1' as named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: choose auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}, but no CUDA GPU is available (use --device cpu)")
    return device


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


def cpu_kind() -> str:
    """The processor and its widest vector/matrix unit PyTorch uses, for benchmark records:
    e.g. 'AMD EPYC (AVX2, 2 threads)'."""
    capability = torch.backends.cpu.get_cpu_capability()
    units = capability + ("+AMX" if cpu_has_amx_bf16() else "") + (
        "+BF16" if "avx512_bf16" in cpu_flags() and capability.startswith("AVX512") else "")
    return f"{cpu_name()} ({units}, {torch.get_num_threads()} threads)"
