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


def cpu_precisions() -> list[str]:
    """This CPU's precisions for inference: those it computes natively, in the order measured
    by `python -m benchmarks.cpu_runtimes` (benchmarks/README.md, "CPU inference against ONNX
    Runtime and OpenVINO"), fastest first. The one rule both paths follow: `infer --prepare`
    (infer/compiled.py) builds each of them, times it on the user's images and takes the fastest
    that agrees with training's precision there; the eager path takes the first it can run
    without a check (bf16 or fp32). ViT-S/16 at 224 px, batch 16, 2 threads, model only, img/s,
    and top-1 agreement with fp32 on a real checkpoint (DINOv2-S's weights with a linear head,
    1,000 CIFAR-10 test images):

        AVX-512 + BF16 (EPYC)     fp32   bf16 (compiled)   int8 (eager)   int8-bf16 (compiled)
        img/s                     19.1   35.1              45.1           48.8
        agreement with fp32       100%   98.6%             83.0%          92.1%

        (ONNX Runtime: fp32 18.4, int8 39.2 img/s, 86.5% agreement; OpenVINO: default bf16 41.3
        img/s, 98.9%; f32 21.8 img/s.)

        AMX + AVX-512 (Xeon)      fp32   bf16 (compiled)   int8 (eager)   int8-bf16 (compiled)
        img/s                     20.4   53.7              34.2           70.6
        agreement with fp32       100%   98.6%             81.8%          92.1%

        (ONNX Runtime: fp32 15.2, int8 22.3 img/s; OpenVINO: default bf16 48.9, f32 22.2.)

        capped at AVX2            fp32 15.9, int8 (compiled) 17.8, int8 (eager) 33.6, bf16 3.5 (emulated)

    Agreement depends on the checkpoint (int8 agreed on 99.07% with a ViT-Ti trained from
    scratch), so a precision other than training's is taken only after it was checked on the
    user's images (with its close calls re-run in training's precision, bf16 agreed on 99.2% of
    the real checkpoint's: infer/compiled.close_calls). "int8": int8 Linear layers and attention
    matmuls with fp32 between; "int8-bf16": bf16 between, where the CPU computes bf16 itself
    (AMX has int8 tiles beside its bf16 ones). Without bf16 instructions (AVX2) bf16 is
    emulated, several times slower than fp32: not a candidate."""
    if cpu_has_amx_bf16() or cpu_has_avx512_bf16():
        return ["int8-bf16", "bf16", "fp32"]
    return ["int8", "fp32"]


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 itself (AMX, AVX512-BF16); elsewhere it is emulated, slow."""
    return "bf16" in cpu_precisions()
