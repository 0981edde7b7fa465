"""Dynamic int8 quantisation of a ViT's Linear layers, for fast inference on CPUs.

What it does: each Linear weight matrix (qkv, out_proj, fc1, fc2, head: ~98% of ViT-B's
arithmetic) is stored once as int8 with one scale per tensor; at run time each input is scaled
to int8 on the fly ("dynamic"), multiplied in int8 with int32 accumulation (fbgemm on x86,
qnnpack on Arm), and scaled back to fp32. Attention's softmax(q k^T) v, the LayerNorms, GELU
and the patch convolution stay in fp32. On an AVX2 CPU this runs ViT-B/16 about 2.6x faster than
fp32, while bf16 there is emulated and 4x slower (benchmarks/README.md); predictions agree with
fp32 on >= 99% of images (measured there too).

This is PyTorch's own `quantize_dynamic`. PyTorch marks the `torch.ao.quantization` namespace
deprecated in favour of torchao but still ships it; if a future PyTorch drops it,
`QuantizationUnavailable` says so in one line and `auto` precision falls back to fp32.
"""

import copy
import warnings

import torch


class QuantizationUnavailable(Exception):
    """This PyTorch build cannot run dynamic int8 Linear layers."""


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` (on the CPU, in eval mode) whose nn.Linear layers run in int8."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise QuantizationUnavailable(f"PyTorch {torch.__version__} has no torch.ao.quantization.quantize_dynamic; "
                                      "use --quantize none") from None
    with warnings.catch_warnings():  # the namespace's deprecation notices, once per call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)
        except (RuntimeError, NotImplementedError) as error:  # no quantized engine in this build
            raise QuantizationUnavailable(f"int8 is not supported by this PyTorch build ({error}); "
                                          "use --quantize none") from None
