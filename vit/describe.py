"""A first look at any checkpoint: which layout, what model its shapes say, which timm names load it.

    python -m weights inspect FILE

A file holds tensors, not a config: the depth is the number of blocks, the width the patch
projection's rows, the patch its kernel, the prefix tokens and the position table their own
tensors. The rest (the heads, the pooling, the activation) no shape says, so the names are
found by shapes: every name of vit/families.py whose model has exactly the file's tensors.
"""

import math
import os
from dataclasses import dataclass, replace

import torch

from vit.families import MODELS, model_config
from vit.model import VisionTransformer
from vit.config import stem_stride
from weights.layouts import LAYOUTS
from weights.load import Pretrained, load_pretrained


@dataclass(frozen=True)
class Description:
    """What a checkpoint's tensors say about the ViT that wrote it."""

    source: str
    layout: str  # LAYOUTS' name
    tensors: int  # in our layout
    parameters: int
    depth: int
    width: int
    patch: tuple[int, int]
    in_channels: int
    mlp_hidden: int
    gated_mlp: bool
    prefix_tokens: tuple[str, ...]  # ("class token", "4 registers", ...)
    positions: str  # "learned, 14 x 14 patches and the class token (224 px)", or how else
    img_size: int | None  # the side its position table was learned for (None: no table)
    head_classes: int | None  # None: no classifier in the file (a backbone)
    names: tuple[str, ...]  # timm names whose model has exactly these tensors
    other_size_names: tuple[str, ...]  # names that fit once the position table is resampled
    ignored: tuple[str, ...] = ()  # a larger model's tensors outside its ViT (an .onnx graph's decoder)
    stem: str | None = None  # a hybrid's CNN stem (vit/layers/stems.py): its kind and stages
    token_stride: int = 0  # pixels per token along a side (the patch, times a stem's stride)

    def lines(self) -> list[str]:
        """The description as `python -m weights inspect` prints it."""
        layout = LAYOUTS[self.layout]
        mlp = f"SwiGLU MLP {self.mlp_hidden}" if self.gated_mlp else f"MLP {self.mlp_hidden}"
        rows = [
            ("layout", f"{layout.name}: {layout.code}"),
            ("tensors", f"{self.tensors} in our layout, {self.parameters / 1e6:.1f} M parameters"),
            ("blocks", f"{self.depth} blocks of width {self.width}, {mlp}"),
            ("patches", f"{self.patch[0]} x {self.patch[1]} px, {self.in_channels} channels" if self.stem is None else
             f"{self.stem}; {self.patch[0]} x {self.patch[1]} patches of its map: {self.token_stride} px per token"),
            ("tokens", ", ".join(self.prefix_tokens) or "patches only"),
            ("positions", self.positions),
            ("head", f"{self.head_classes} classes" if self.head_classes else "none: a backbone (pooled features)"),
        ]
        if self.names:
            heads = model_config(self.names[0]).num_heads
            rows.append(("timm names", ", ".join(self.names) + f"  ({heads} heads, as the names say: a file does not)"))
            rows.append(("load it", f"vit.create_model('{self.names[0]}', pretrained='{self.source}')"))
        elif self.other_size_names:
            rows.append(("timm names", ", ".join(self.other_size_names) + f"  (built at {self.img_size} px)"))
            rows.append(("load it", f"vit.create_model('{self.other_size_names[0]}', img_size={self.img_size}, "
                                    f"pretrained='{self.source}')"))
        else:
            rows.append(("timm names", "none has these shapes"))
        if self.ignored:
            shown = ", ".join(self.ignored[:4]) + (", ..." if len(self.ignored) > 4 else "")
            rows.append(("ignored", f"{len(self.ignored)} tensors outside the ViT: {shown}"))
        width = max(len(label) for label, _ in rows)
        return [self.source] + [f"  {label:<{width}}  {text}" for label, text in rows]


def describe(pretrained: str | os.PathLike | Pretrained) -> Description:
    """Read a checkpoint (any layout, path or hub id; or weights already read) and say what it is."""
    weights = pretrained if isinstance(pretrained, Pretrained) else load_pretrained(pretrained)
    tensors = weights.state_dict
    stem, stride = _stem(tensors)
    projection = tensors.get("patch_embedding.projection.weight")  # (D, C, P, P); MobileCLIP's stem has none
    if projection is None:
        projection = tensors["patch_embedding.stem.conv3.weight"][:, :, :1, :1]  # its map is D wide: patch 1
    width, in_channels, *patch = projection.shape
    stride = stride * patch[0]
    depth = len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})
    fc1 = next((v for k, v in tensors.items() if k.endswith("mlp.fc1.weight")), None)  # (hidden, D)
    fc2 = next((v for k, v in tensors.items() if k.endswith("mlp.fc2.weight")), None)  # (D, hidden)
    gated = fc1 is not None and fc1.shape[0] == 2 * fc2.shape[1]  # a SwiGLU's fc1: gate and value rows
    mlp_hidden = 0 if fc1 is None else fc1.shape[0] // (2 if gated else 1)
    prefix = []
    if "cls_token" in tensors:
        prefix.append("class token")
    if "distillation_token" in tensors:
        prefix.append("distillation token")
    if "register_tokens" in tensors:
        prefix.append(f"{tensors['register_tokens'].shape[1]} registers")
    head = tensors.get("head.weight")
    names, other_size = _matching_names(tensors, depth, width, patch[0], head.shape[0] if head is not None else 0)
    positions, img_size = _positions(tensors, stride, int("cls_token" in tensors) + int("distillation_token" in tensors))
    return Description(
        source=weights.source, layout=weights.layout, tensors=len(tensors),
        parameters=sum(v.numel() for v in tensors.values()), depth=depth, width=width, patch=tuple(patch),
        in_channels=in_channels, mlp_hidden=mlp_hidden, gated_mlp=gated, prefix_tokens=tuple(prefix),
        positions=positions, img_size=img_size,
        head_classes=None if head is None else head.shape[0], names=names, other_size_names=other_size,
        ignored=weights.ignored, stem=stem, token_stride=stride)


def _stem(tensors: dict[str, torch.Tensor]) -> tuple[str | None, int]:
    """A hybrid's stem from its tensors (vit/layers/stems.py): what it is, and the stride of its map (1: none)."""
    stages = {}  # stage -> blocks
    for key in tensors:
        parts = key.split(".")
        if key.startswith("patch_embedding.stem.stages."):
            stages[int(parts[3])] = max(stages.get(int(parts[3]), 0), int(parts[4]) + 1)
    depths = tuple(stages[i] for i in sorted(stages))
    if "patch_embedding.stem.conv.weight" in tensors:
        kind, what = "bit", "BiT's ResNet"
    elif "patch_embedding.stem.norm3.weight" in tensors:
        kind, what = "resnet_d", "a ResNet-D"
    elif "patch_embedding.stem.conv3.weight" in tensors:
        return "MobileCLIP's convolutional stem", stem_stride("mobileclip", ())
    else:
        return None, 1
    return f"a CNN stem: {what}, stages {depths}" if depths else f"a CNN stem: {what}'s first convolution", \
        stem_stride(kind, depths)


def _positions(tensors: dict[str, torch.Tensor], patch: int, tokens: int) -> tuple[str, int | None]:
    """How positions enter, from the tensors: a learned table (its grid, whether it covers the
    class token, the image side it was learned for), a relative bias table, or neither (rotary:
    computed, not stored)."""
    table = tensors.get("position_embedding")
    if table is None:
        if any(k.endswith("relative_bias.table") for k in tensors):
            return "relative: a learned bias per offset in every block (BEiT)", None
        return "none stored: rotary (RoPE, computed from each patch's place)", None
    entries = table.shape[1]
    for covered, what in ((tokens, " and the class token"), (0, "")):
        side = math.isqrt(entries - covered)
        if covered <= entries and side * side == entries - covered:
            return f"learned, {side} x {side} patches{what} ({side * patch} px)", side * patch
    return f"learned, {entries} entries", None


def _matching_names(tensors: dict[str, torch.Tensor], depth: int, width: int, patch: int,
                    num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names whose model has the file's tensors exactly, and those that would after the
    position table is resampled (another image size). Names are screened by depth, width and
    patch first; only those few are built, on the meta device (shapes, no memory)."""
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    exact, other_size = [], []
    for name in MODELS:
        cfg = model_config(name)
        if (cfg.depth, cfg.embed_dim, cfg.patch_size) != (depth, width, patch):
            continue
        with torch.device("meta"):
            model = VisionTransformer(replace(cfg, num_classes=num_classes))
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if theirs == shapes:
            exact.append(name)
        elif theirs.keys() == shapes.keys() and all(theirs[k] == shapes[k] for k in shapes if k != "position_embedding"):
            other_size.append(name)
    return tuple(exact), tuple(other_size)


def holds(state_dict: dict) -> str:
    """What model a state dict holds, as `python -m weights inspect` names it, in a few words."""
    try:
        found = describe(Pretrained(state_dict, "the checkpoint", "ours"))
    except Exception:  # not enough of a ViT to describe
        return "no ViT this project knows"
    names = found.names or found.other_size_names
    return f"{found.depth} blocks of width {found.width}" + (f" ({', '.join(names[:2])})" if names else "")
