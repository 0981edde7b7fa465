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


# ---------------------------------------------------------------- threads on a machine others use

def others_running(samples: int = 5) -> float:
    """How many cores other work keeps busy now: the runnable tasks the kernel counts
    (/proc/loadavg's fourth field, sampled `samples` times 10 ms apart, the median, this process's
    one running thread taken off), no more than the 1-minute load average says (so that a burst
    that just ended, or one sample's noise, is not counted); 0 where Linux does not say."""
    import statistics
    import time

    try:
        counts = []
        for _ in range(samples):
            with open("/proc/loadavg") as file:
                counts.append(int(file.read().split()[3].split("/")[0]) - 1)
            time.sleep(0.01)
        return max(0.0, min(statistics.median(counts), os.getloadavg()[0]))
    except (OSError, ValueError, IndexError):
        return 0.0


def threads_for_this_machine() -> tuple[int, str] | None:
    """(threads, why) where other work keeps some of this process's cores busy: as many threads as
    cores are left (at least 1), since PyTorch's OpenMP threads spin while they wait for a core they
    do not get (benchmarks/README.md, "A busy machine"); None where PyTorch's default stands (a quiet
    machine, or OMP_NUM_THREADS set: the user's choice)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = others_running()
    threads = max(1, min(torch.get_num_threads(), round(cores - busy)))
    if threads >= torch.get_num_threads():
        return None
    return threads, f"other work keeps {busy:.1f} of this machine's {cores} cores busy"


def use_free_cores() -> str | None:
    """Apply threads_for_this_machine before the first operation; the one-line note, or None."""
    chosen = threads_for_this_machine()
    if chosen is None:
        return None
    torch.set_num_threads(chosen[0])
    return f"{chosen[1]}: using {chosen[0]} thread{'s' * (chosen[0] > 1)} (OMP_NUM_THREADS=N to choose)"
