"""The per-token feed-forward network: the paper's MLP (D -> 4D -> D, GELU), or SwiGLU's gated
one; `make_mlp` chooses."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from vit.config import ACTIVATIONS, ViTConfig
from vit.layers.common import make_norm


class MLP(nn.Module):
    """Per-token feed-forward network: D -> 4D -> D, exact (erf) GELU between in the original."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", in_bias: bool = True, out_bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=in_bias)
        self.fc2 = nn.Linear(hidden, dim, bias=out_bias)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, hidden) -> (B, T, D)
        return self.fc2(self.activation(self.fc1(x)))


class GatedMLP(nn.Module):
    """SwiGLU (Shazeer 2020): fc1 makes two hidden vectors at once, a gate and a value, and their
    product silu(gate) * value goes through fc2. fc1's rows are [gate; value], as timm's packed
    GluMlp stores them. EVA-02 norms the hidden layer before fc2 (`inner_norm`)."""

    def __init__(self, cfg: ViTConfig, in_bias: bool = True, out_bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, 2 * cfg.mlp_hidden, bias=in_bias)
        self.inner_norm = make_norm(cfg, cfg.mlp_hidden) if cfg.mlp_inner_norm else nn.Identity()
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.embed_dim, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        gate, value = self.fc1(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.fc2(self.inner_norm(F.silu(gate) * value))


def make_mlp(cfg: ViTConfig, out_bias: bool = True) -> nn.Module:
    in_bias = cfg.proj_bias or cfg.parallel  # (a parallel block's MLP always has an input bias: timm's in_proj's)
    if cfg.gated_mlp:
        return GatedMLP(cfg, in_bias=in_bias, out_bias=cfg.proj_bias and out_bias)
    return MLP(cfg.embed_dim, cfg.mlp_hidden, cfg.activation, in_bias=in_bias, out_bias=cfg.proj_bias and out_bias)
