"""A ViT's weights read out of an ONNX graph (`pip install onnx`, the project's "onnx" extra).

An exported graph keeps the weights as tensors (initializers, and Constant nodes' values), but
not always under their parameter names. Four cases, each named back here:

    named               "backbone.encoder.layer.0.norm1.weight": the parameter's own name (a name
                        without a dot only where a layout has it at the top: "cls_token", "pos_embed")
    anonymous matrices  "onnx::MatMul_1966" (PyTorch's TorchScript exporter) or "val_12" (its dynamo
                        exporter) feeding a MatMul or Gemm: the node's module is named by its scope
                        ("/backbone/encoder/layer.0/attention/attention/key/MatMul", or the dynamo
                        exporter's pkg.torch.onnx.name_scopes), the tensor is that module's weight,
                        stored transposed ((in, out): x @ W^T as x @ W'); a Gemm says whether
    deduplicated        equal tensors (zero biases) kept once, the others its copies by Identity nodes
    folded positions    exporters trace transformers' resize of the position table, and fold its
                        two parts into constants: (1, 1, D) for the CLS token and (1, N, D) for the
                        patches, both fed to nodes of the "embeddings" scope: the table is them joined

What stays anonymous (shape constants, other models' pieces) is returned apart. The names then
go through the layouts (weights/layouts.py) as any file's do; a ViT that is the backbone of a
larger model is found under its prefix ("backbone.") by weights/load.py.
"""

import ast
import re
from pathlib import Path

import numpy as np
import torch

from weights.layouts import LAYOUTS

MAX_SCOPES = 4096  # characters of one node's name scopes: a deep model's take a few hundred
DOTTED = re.compile(r"[A-Za-z_]\w*(\.\w+)+")  # a parameter's name: "blocks.0.attn.qkv.weight"
# Undotted parameter names: the top-level tensors of any layout ("cls_token", "pos_embed", ...);
# other undotted names are exporters' constants ("val_12", "expand").
TOP_LEVEL = {key for layout in LAYOUTS.values() if layout.table
             for pair in layout.table.items() for key in pair if "." not in key and "/" not in key}


def read_onnx(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(tensors under their parameter names, the names of the graph's tensors left anonymous)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph  # (external data beside the file loads too)
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:  # an equal tensor the exporter kept once
            values[node.output[0]] = values[node.input[0]]
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name in values:
                consumers.setdefault(name, []).append(node)

    named, anonymous, folded = {}, [], []
    for name, array in values.items():
        if array.dtype.kind != "f" or array.ndim == 0:
            continue  # shapes, indices, scalars: not weights
        if DOTTED.fullmatch(name) or name in TOP_LEVEL:
            named[name] = array
            continue
        node = next(iter(consumers.get(name, [])), None)
        scope = _scope(node)
        if node is not None and node.op_type in ("MatMul", "Gemm") and array.ndim == 2 and scope:
            transposed = node.op_type == "MatMul" or not _attribute(node, "transB", 0)
            named[f"{scope}.weight"] = array.T if transposed else array
        elif scope and scope.endswith("embeddings") and array.ndim == 3 and array.shape[0] == 1:
            folded.append((scope, name, array))
        else:
            anonymous.append(name)
    anonymous += _join_positions(folded, named)
    copies: dict[int, torch.Tensor] = {}  # one writable copy per array: its aliases (Identity outputs) share it
    tensors = {}
    for key, array in named.items():
        if id(array) not in copies:
            copies[id(array)] = torch.from_numpy(np.array(array))
        tensors[key] = copies[id(array)]
    return tensors, anonymous


def _scope(node) -> str | None:
    """The module a node belongs to: from the dynamo exporter's name scopes (['', 'blocks',
    'blocks.0', 'blocks.0.attn', 'blocks.0.attn.qkv', 'linear']: the last module's full name), or
    from a TorchScript export's node name ("/blocks/blocks.0/attn/qkv/MatMul": a container's
    items repeat its name, "blocks" then "blocks.0", so a part that extends the one before it
    replaces it) -> "blocks.0.attn.qkv"."""
    if node is None:
        return None
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if scopes is not None and len(scopes) > MAX_SCOPES:  # parsed only when of a size an exporter writes
        return None
    if scopes is not None:
        modules = ast.literal_eval(scopes)[:-1]  # the last entry is the operation
        return modules[-1] if modules and modules[-1] else None
    if not node.name.startswith("/"):
        return None
    parts: list[str] = []
    for part in node.name.strip("/").split("/")[:-1]:
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts) or None


def _attribute(node, name: str, default: int) -> int:
    return next((attribute.i for attribute in node.attribute if attribute.name == name), default)


def _join_positions(folded: list, named: dict) -> list[str]:
    """The position table from its folded parts, one (1, 1, D) and one (1, N, D) per embeddings
    scope, named "<scope>.position_embeddings"; the names of parts that made no table."""
    left = []
    for scope in {scope for scope, _, _ in folded}:
        parts = [(name, array) for s, name, array in folded if s == scope]
        cls = [array for _, array in parts if array.shape[1] == 1]
        patches = [array for _, array in parts if array.shape[1] > 1 and round(array.shape[1] ** 0.5) ** 2 == array.shape[1]]
        if len(cls) == 1 and len(patches) == 1 and cls[0].shape[2] == patches[0].shape[2]:
            named[f"{scope}.position_embeddings"] = np.concatenate([cls[0], patches[0]], axis=1)
        else:
            left += [name for name, _ in parts]
    return left
