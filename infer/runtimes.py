"""Runtimes made for inference as `--prepare` candidates beside ours: the checkpoint's own ONNX
export (infer/export.py), run by ONNX Runtime (fp32, or its dynamic int8), where it is installed
(`pip install -e ".[onnx]"`).

    ort-fp32       ONNX Runtime, the exported graph as it is
    ort-int8       ONNX Runtime, quantize_dynamic's int8 weights (activations' scales per batch)

OpenVINO is not a candidate: loaded into a PyTorch process (2026.4.1, PyTorch 2.14.1), a later
PyTorch training run in that process died of SIGSEGV (benchmarks/README.md, "The runtimes as
candidates"), and `infer` runs PyTorch beside the chosen runtime (close calls, explanations).

infer/prepare.py checks and times each exactly as it does ours: its top-1 answers against
training's on the user's images, the close calls that restore the agreement (decided by the exact
model), its sustained img/s. infer/precision.choose takes the fastest that agrees; a PyTorch path
stays first where it is as fast. What runs then is the runtime's speed with our agreement
guarantee, which the runtime does not give alone. Its file is kept as a compiled package is
(infer/cache.py): in the private folder, by a plain name, with its hash checked before loading.
"""

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import torch

RUNTIMES = {"ort-fp32": "onnxruntime", "ort-int8": "onnxruntime"}  # candidate -> the package it needs
EXPORTED = "ort-fp32"  # the candidate whose file is the export as it is: the others can start from it


class RuntimeUnavailable(Exception):
    """The runtime cannot build or load this model here (one line)."""


def available() -> list[str]:
    """The candidates whose runtime is installed, and the ONNX exporter with it."""
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        return []
    return [name for name, package in RUNTIMES.items() if importlib.util.find_spec(package) is not None]


def build(model: torch.nn.Module, card, name: str, path: Path, exported: Path | None = None) -> None:
    """Write candidate `name`'s model file at `path` (.onnx, atomically): the export, and for
    ort-int8 its dynamic int8 quantisation. exported: EXPORTED's file, built from the same model
    (read instead of exporting again: about half of building ort-int8)."""
    from infer.export import export_onnx  # (the ONNX tools: only when building)

    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.onnx")
    try:
        source = exported if exported is not None and name != EXPORTED else partial
        if source == partial:
            export_onnx(model.eval().cpu(), card, partial)
        if name == "ort-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = partial.with_name(f"{partial.stem}.int8.onnx")
            root, level = logging.getLogger(), logging.getLogger().level
            try:
                root.setLevel(logging.ERROR)  # (its advice to pre-process the graph, logged on the root logger)
                quantize_dynamic(str(source), str(quantized), weight_type=QuantType.QInt8)
                os.replace(quantized, partial)
            finally:
                root.setLevel(level)
                quantized.unlink(missing_ok=True)
        os.replace(partial, path)
    except Exception as error:  # an operator the exporter or the quantiser does not take, a full disk
        raise RuntimeUnavailable(f"{name}: building its model failed ({str(error).splitlines()[0][:160]})") from None
    finally:
        partial.unlink(missing_ok=True)


class RuntimeModel:
    """A candidate's model file run by its runtime on the CPU: (B, 3, S, S) float tensor -> (B,
    classes) logits, with as many threads as PyTorch uses. batch_size: the batches classify runs
    (our packages', infer/compiled.BATCH_SIZE, so that the two are timed and run alike)."""

    def __init__(self, path: Path, name: str, img_size: int, batch_size: int):
        self.img_size, self.batch_size = img_size, batch_size
        try:
            self.run = _ort(path)
        except Exception as error:  # the runtimes raise their own types for a file they cannot read
            raise RuntimeUnavailable(f"{name}: cannot load {path.name} ({str(error).splitlines()[0][:160]})") from None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.img_size, self.img_size):
            raise ValueError(f"the model reads (B, 3, {self.img_size}, {self.img_size}) images, not {tuple(images.shape)}")
        # (a copy, so that logits kept across batches never share a runtime's buffer)
        return torch.from_numpy(np.array(self.run(images.float().contiguous().numpy()), dtype=np.float32))

    def to(self, device):  # the CPU's, always
        return self


def _ort(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["logits"], {"images": batch})[0]
