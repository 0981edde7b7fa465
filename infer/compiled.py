"""The compiled CPU path: a checkpoint quantised and compiled for this CPU once, ahead of time,
checked against training's precision on your images, and kept, so that every later
`python -m infer` loads it in about a second.

    python -m infer --checkpoint CK --prepare --data FOLDER    # once per checkpoint and machine
    python -m infer --checkpoint CK --image ...                # then: the package it chose

What a package holds, built by PyTorch's own tools (no hand-written kernel):

  1. torch.export traces the model into one graph; where attention will run in bf16, it is written
     out (`WrittenOutAttention`: two batched matmuls and a softmax Inductor fuses into one
     kernel), faster on a CPU than PyTorch's fused kernel at ViT's sequence lengths;
  2. for int8, PT2E quantisation with torchao's X86InductorQuantizer marks every Linear layer
     int8: weights int8 per output channel, activations int8 with a scale taken from each batch
     ("dynamic": no calibration data). Attention's two matmuls stay out: with dynamic scales the
     quantiser leaves them as they are even written out as matmuls, which gave the same answers at
     the same speed (benchmarks/README.md, "Whole runs");
  3. Inductor compiles it with the weights frozen (pre-packed for oneDNN's kernels), and what lies
     between the int8 layers (attention included) in bf16 where the CPU computes bf16 natively;
  4. AOTInductor writes the compiled model as one .pt2 file, loaded without compiling again.

Which package a checkpoint runs is decided elsewhere: infer/prepare.py builds and times every
candidate on the user's images, infer/precision.py chooses among them. This file builds packages
and loads them.

A package is this CPU's (its instruction set is compiled in) and this PyTorch's; where it is
kept, and what is trusted when it is read back, is infer/cache.py's. It runs batches of a fixed
size: a shorter last batch is filled up with copies of its last image, whose outputs are dropped
(copies leave the batch's int8 scales as they were).
"""

import json
import logging
import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from infer import cache
from infer.precision import top_two_gap
from vit.layers.attention import SoftmaxAttention, attention_logits
from weights.files import atomic_write

CLOSE_BATCH = 16  # close calls gathered across batches before the exact model runs them together (a batch
#                  of 1-2, eagerly, costs several times as much per image: benchmarks/README.md, "Close calls")
BATCH_SIZE = 16  # a package's fixed batch: as fast as 32 for ViT-S/16 int8, faster than 8 (benchmarks/README.md)
AUTO_BUILD_IMAGES = 5000  # a job this long prepares first, checked on its own images: preparing repays itself
#   after about 3,600-7,900 ViT-S/16 and 4,200-5,000 ViT-B/16 images on 2 cores, by the day (benchmarks/README.md)


class CompileUnavailable(Exception):
    """This installation cannot build the compiled package (torchao missing, no C++ compiler)."""


def build(model: torch.nn.Module, img_size: int, precision: str, path: Path, batch_size: int = BATCH_SIZE) -> float:
    """Quantise, compile and write `model`'s package to `path` (atomically: a half-written file is
    never found). Returns the seconds it took."""
    import torch._inductor.config as inductor_config

    start = time.perf_counter()
    with torch.no_grad(), quiet_compilers():
        exported = program(model, img_size, precision, batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.pt2")
        freezing, inductor_config.freezing = inductor_config.freezing, True  # weights pre-packed as constants
        try:
            torch._inductor.aoti_compile_and_package(exported, package_path=str(partial))
            os.replace(partial, path)
        except Exception as error:  # no C++ compiler, or an operator Inductor cannot compile here
            raise CompileUnavailable(f"compiling for this CPU failed ({str(error).splitlines()[0][:160]})") from None
        finally:  # (Ctrl-C included: no half-built file is left behind)
            inductor_config.freezing = freezing
            partial.unlink(missing_ok=True)
    return time.perf_counter() - start


def program(model: torch.nn.Module, img_size: int, precision: str, batch_size: int = BATCH_SIZE):
    """The package's graph before Inductor compiles it (steps 1-2 above, and step 3's bf16): an
    ExportedProgram of (batch_size, 3, S, S) images -> logits. benchmarks/package_profile.py
    compiles the same graph to see where a package's time goes."""
    try:
        with quiet_compilers():
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise CompileUnavailable("the compiled int8 path needs torchao: pip install -e \".[fast]\"") from None
    example = torch.zeros(batch_size, 3, img_size, img_size)
    model.eval().cpu()
    dtype = torch.bfloat16 if precision in ("int8-bf16", "bf16") else None  # what runs between the int8 layers
    written_out = written_out_attention(model) if dtype is not None else nullcontext()
    with torch.no_grad(), quiet_compilers(), written_out:
        graph = torch.export.export(model, (example,)).module()
        if precision.startswith("int8"):
            quantizer = x86.X86InductorQuantizer()
            quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=True))
            observed = prepare_pt2e(graph, quantizer)
            observed(example)  # (dynamic scales: one pass to settle the graph, no statistics kept)
            graph = convert_pt2e(observed)
        return torch.export.export(Between(graph, dtype), (example,))


class WrittenOutAttention(SoftmaxAttention):
    """SoftmaxAttention's formula, softmax(q k^T * scale + bias) v, written out for Inductor on a
    CPU: two batched matmuls and a softmax that it fuses into one kernel. In bf16 that runs faster
    than PyTorch's fused kernel at ViT's sequence lengths; in fp32, no faster (benchmarks/README.md,
    "Attention written out"). The softmax's maximum is taken with `max`, not
    `amax` as torch.softmax's own steps are: Inductor recognises those steps and puts the fused
    kernel back (were it ever to recognise these too, the package would only be as fast as before)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        logits = attention_logits(q, k, bias)  # (B, H, T, T)
        weights = (logits - logits.max(dim=-1, keepdim=True).values).exp()  # (minus the row's largest: no overflow)
        return weights / weights.sum(dim=-1, keepdim=True) @ v  # (B, H, T, T) @ (B, H, T, hd)


@contextmanager
def written_out_attention(model: torch.nn.Module):
    """Inside the `with`, every attention core of `model` that is PyTorch's fused kernel
    (SoftmaxAttention) is WrittenOutAttention; restored on leaving. Other cores (talking heads)
    are written out already."""
    swapped = [(module, module.softmax_attention) for module in model.modules()
               if type(getattr(module, "softmax_attention", None)) is SoftmaxAttention]
    try:
        for module, _ in swapped:
            module.softmax_attention = WrittenOutAttention()
        yield model
    finally:
        for module, core in swapped:
            module.softmax_attention = core


@contextmanager
def quiet_compilers():
    """The build's notices, which are not the user's business, kept off the terminal: torchao's
    Enum registration, the C++ toolchain's "no CUDA runtime", the quantiser's tensor copies."""
    loggers = [logging.getLogger(name) for name in ("torch.utils._pytree", "torch.utils.cpp_extension")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class Between(torch.nn.Module):
    """The quantised graph with what lies between its int8 layers in `dtype` (bf16 autocast), or
    fp32 (dtype None); logits in fp32 either way."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.model, self.dtype = model, dtype  # (not `graph`: a GraphModule's own attribute, for its fx.Graph)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            return self.model(images).float()


def load_package(path: Path):
    """The package as a function of one batch. PyTorch's C++ loader directly, as
    torch._inductor.aoti_load_package wraps it, without that module's import of the compiler
    stack (1.3 s of a run's start-up); the public loader where this PyTorch lacks it."""
    try:
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except (AttributeError, TypeError):
        runner = torch._inductor.aoti_load_package(str(path))
        return lambda images: runner(images)
    return lambda images: loader.boxed_run([images])[0]  # one tensor in, one out: no pytree to (un)flatten


class CloseCalls:
    """A fast model whose close calls are decided by a more exact one: (B, 3, S, S) -> (B, classes)
    logits of `fast`, except where its two highest logits are closer than `gap` (a lower
    precision could have swapped them), whose rows `decider()` computes again: training's
    precision (the model as trained, or its package), or a second opinion, itself a CloseCalls whose
    own close calls go on to training's precision (infer/prepare.py). `decider` is called on the
    first close call only: a run without one never reads the checkpoint or loads another package."""

    def __init__(self, fast, gap: float, decider):
        self.fast, self.gap, self.decider = fast, gap, decider
        self.batch_size = fast.batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        logits, close = self.split(images)
        if close.any():
            logits[close] = self.decide(images[close])
        return logits

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fast model's (B, classes) logits, and which of its rows are close calls (B,)."""
        logits = self.fast(images).float()
        return logits, top_two_gap(logits) < self.gap

    def decide(self, images: torch.Tensor) -> torch.Tensor:
        """Close calls (b, 3, S, S) -> the decider's (b, classes) logits (a second opinion's with
        its own close calls decided). Classifier.iter_classify gathers them across batches and asks
        in full batches of CLOSE_BATCH, at each step of a cascade."""
        return self.decider()(images).float()

    def to(self, device):  # the CPU's, always
        return self


class CompiledModel:
    """A package loaded: (B, 3, S, S) float model input -> (B, classes) logits, any B. The package's
    native code reads exactly (batch_size, 3, S, S): any other input is refused before it is called."""

    def __init__(self, path: Path, img_size: int, batch_size: int = BATCH_SIZE):
        with quiet_compilers():
            self.run = load_package(path)
        self.img_size, self.batch_size = img_size, batch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(f"the compiled package reads (B, 3, {self.img_size}, {self.img_size}) images, "
                             f"not {tuple(images.shape)}")
        outputs = []
        for chunk in images.float().split(self.batch_size):
            filled = torch.cat([chunk, chunk[-1:].expand(self.batch_size - len(chunk), -1, -1, -1)])
            outputs.append(self.run(filled.contiguous())[: len(chunk)])
        return torch.cat(outputs)

    def to(self, device):  # the CPU's, always
        return self


def int8_package(checkpoint: str | Path, model: torch.nn.Module, img_size: int) -> Path:
    """The checkpoint's int8 package (int8 layers, fp32 between) for `--quantize int8` (unchecked:
    the user asked), built the first time and kept, by the checkpoint's contents and this CPU, with
    its hash recorded beside it as a verdict's is (infer/cache.py)."""
    key = f"{cache.sha256(checkpoint)[:16]}-{cache.cpu_key()}"
    record = cache.private_dir() / f"{Path(checkpoint).stem}-int8-{key}.json"
    try:
        return cache.package_file(json.loads(record.read_text()))
    except (OSError, ValueError, TypeError, AttributeError, cache.VerdictUnusable):
        pass  # not built yet, or not to be trusted: build it (again)
    path = cache.new_package_path(checkpoint, "int8")
    build(model, img_size, "int8", path)
    atomic_write(record, lambda file: file.write(json.dumps({"package": path.name,
                                                              "package_sha256": cache.sha256(path)}).encode()))
    return path
