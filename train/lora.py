"""LoRA (Hu et al. 2021, "Low-Rank Adaptation of Large Language Models"): fine-tune a giant by
learning a small change to its weights instead of the weights.

A frozen weight W (out, in) gets a trainable low-rank update:

    y = W x + b + scale * B (A x)        A (r, in), B (out, r), r small; scale = alpha / r

B starts at zero, so training starts exactly from the pretrained model; A starts random
(Kaiming-uniform, as the paper's code). Only A, B and the new head learn: for ViT-g/14 with rank 8
on q, k and v that is 3.1M of 1.1B parameters, so gradients and AdamW's state shrink ~350 times.
After training W + scale * B @ A is one matrix again: the saved model is a plain ViT
(`merged_state_dict`), read by infer, export and create_model like any other, at no extra cost.

Our attention keeps q, k and v in one fused matrix (rows [q; k; v], as timm's weights). PEFT
adapts whole nn.Linear modules, so there q, k and v could only share one adapter; the paper
adapts q and v, each with its own. Here an adapter sits on any slice of a matrix's rows, so
`--lora-targets q,v` is the paper's choice and `qkv` (the default) gives q, k and v one each. Written
out (a module of a few lines) rather than with PEFT for that reason, and so a learner can read it.
"""

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vit.model import VisionTransformer

# Each target: (the Linear inside a block, which third of its rows: q, k or v of the fused qkv; None: all rows)
TARGETS = {"q": ("attention.qkv", 0), "k": ("attention.qkv", 1), "v": ("attention.qkv", 2),
           "out": ("attention.out_proj", None), "fc1": ("mlp.fc1", None), "fc2": ("mlp.fc2", None)}
SHORTHANDS = {"qkv": ("q", "k", "v"), "mlp": ("fc1", "fc2")}
TRAINED_WITH_ADAPTERS = ("head.", "head_distillation.")  # the new classifier learns in full


def parse_targets(text: str) -> tuple[str, ...]:
    """'q,v' / 'qkv,out' / 'mlp' -> the targets' names in TARGETS; ValueError names the choices."""
    names = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word not in TARGETS and word not in SHORTHANDS:
            raise ValueError(f"{word!r} is not a LoRA target; choose from {', '.join([*SHORTHANDS, *TARGETS])}")
        names += [n for n in SHORTHANDS.get(word, (word,)) if n not in names]
    if not names:
        raise ValueError("no LoRA target given")
    return tuple(names)


class LoRALinear(nn.Linear):
    """A frozen nn.Linear (the same weight and bias tensors, so the keys stay `weight` and `bias`)
    plus a rank-r update on each of `parts`, slices of its output rows."""

    def __init__(self, base: nn.Linear, parts: list[slice], rank: int, alpha: float):
        nn.Module.__init__(self)  # not nn.Linear's: the tensors are base's
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.parts, self.rank, self.scale = parts, rank, alpha / rank
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        rows = sum(part.stop - part.start for part in parts)
        self.lora_a = nn.Parameter(torch.empty(len(parts) * rank, self.in_features, **like))  # every part's A, stacked
        self.lora_b = nn.Parameter(torch.zeros(rows, rank, **like))  # every part's B, stacked: 0, so no change yet
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises a weight

    def adapters(self, a: torch.Tensor | None = None, b: torch.Tensor | None = None):
        """(rows, A_i (r, in), B_i (rows_i, r)) for each part; a, b: this module's (default) or
        the gathered tensors of a saved state."""
        a = self.lora_a if a is None else a
        b = self.lora_b if b is None else b
        return zip(self.parts, a.split(self.rank), b.split([p.stop - p.start for p in self.parts]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = F.linear(x, self.weight, self.bias)  # the frozen layer
        pieces = [(part, F.linear(F.linear(x, a), b)) for part, a, b in self.adapters()]  # B_i (A_i x): (..., rows_i)
        if len(pieces) == 1 and pieces[0][1].shape[-1] == self.out_features:
            update = pieces[0][1]  # one adapter on every row
        else:  # adapters on some rows (q and v of qkv): zeros elsewhere
            update = y.new_zeros(y.shape)
            for part, piece in pieces:
                update[..., part] = piece
        return y + self.scale * update

    @torch.no_grad()
    def delta(self, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        """The update as a weight, scale * B @ A: (out, in), zero on rows no adapter covers."""
        weight = torch.zeros(self.out_features, self.in_features, device=self.weight.device if a is None else a.device)
        for part, a_i, b_i in self.adapters(a, b):
            weight[part] = b_i.float() @ a_i.float()
        return self.scale * weight

    def extra_repr(self) -> str:
        parts = ", ".join(f"{p.start}:{p.stop}" for p in self.parts)
        return f"{super().extra_repr()}, lora rank={self.rank}, scale={self.scale:g}, rows=[{parts}]"


def add_lora(model: VisionTransformer, rank: int, alpha: float | None = None, targets=("q", "k", "v")) -> VisionTransformer:
    """Freeze `model` and put rank-`rank` adapters on `targets` in every block (names in TARGETS);
    the head stays trainable. alpha: the update's scale is alpha / rank (default: alpha = rank).
    In place; returns the model."""
    alpha = float(rank if alpha is None else alpha)
    model.requires_grad_(False)
    by_module: dict[str, list[int | None]] = {}
    for target in targets:
        module, third = TARGETS[target]
        by_module.setdefault(module, []).append(third)
    for block_name, block in model.named_modules():
        if not hasattr(block, "attention") or not hasattr(block, "mlp"):
            continue  # not an encoder block (BranchedBlock's branches are, and are found themselves)
        for path, thirds in by_module.items():
            parent_path, _, attr = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            base = getattr(parent, attr)
            if None in thirds:
                parts = [slice(0, base.out_features)]
            else:  # the q, k, v rows of the fused matrix (grouped-query blocks: narrower k, v)
                bounds = [0, *itertools.accumulate(parent.split)]
                parts = [slice(bounds[t], bounds[t + 1]) for t in sorted(thirds)]
            setattr(parent, attr, LoRALinear(base, parts, rank, alpha))
    for name, param in model.named_parameters():
        if name.startswith(TRAINED_WITH_ADAPTERS):
            param.requires_grad_(True)
    return model


@torch.no_grad()
def merged_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plain model's weights: each adapted weight W + scale * B @ A, the adapters' own keys
    gone. state_dict: the model's weights already gathered (FSDP), else model.state_dict()."""
    state = dict(model.state_dict() if state_dict is None else state_dict)
    if not state:  # FSDP's ranks other than 0 gather nothing
        return state
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            a, b = state.pop(f"{name}.lora_a"), state.pop(f"{name}.lora_b")
            weight = state[f"{name}.weight"]
            state[f"{name}.weight"] = (weight.float() + module.delta(a, b).to(weight.device)).to(weight.dtype)
    return state


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
