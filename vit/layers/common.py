"""The small parts every kind of block uses: the norm (LayerNorm or RMSNorm), layer scale, drop
path, and `Borrowed`, a module read in a second place without owning it."""

import torch
import torch.nn as nn

from vit.config import ViTConfig


def make_norm(cfg: ViTConfig, dim: int, eps: float | None = None) -> nn.Module:
    """LayerNorm (the original: (x - mean) / std * w + b) or RMSNorm (AIMv2: x / rms(x) * w); eps:
    the config's unless given."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps or cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=eps or cfg.layer_norm_eps)


class LayerScale(nn.Module):
    """x * gamma, one learned factor per channel (CaiT; DeiT-III and DINOv2 use it). Started
    small (1e-6 or 1e-5), each block begins close to the identity: deep stacks train stably.
    The original ViT has none (nn.Identity in its place)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((cfg.embed_dim,), cfg.layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: in training, a residual branch's output is zeroed for each sample with
    probability p, and the kept ones are scaled by 1 / (1 - p) so its expected value is unchanged;
    at evaluation, the identity. A deep model trains as an ensemble of shallower ones. Only in
    the model when train --drop-path asks for it (nn.Identity in its place)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if not self.training:
            return x
        keep = x.new_empty(x.shape[0], 1, 1).bernoulli_(1.0 - self.p).div_(1.0 - self.p)  # (B, 1, 1): 0 or 1/(1-p)
        return x * keep


def drop_path_for(cfg: ViTConfig, index: int) -> nn.Module:
    """Block `index`'s stochastic depth: its rate rises linearly over the blocks, 0 at the first and
    drop_path_rate at the last (as timm computes it); nn.Identity where the rate is 0."""
    rate = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu")[index].item()
    return DropPath(rate) if rate > 0 else nn.Identity()


class Borrowed(nn.Module):
    """Another module's forward, used in a second place without owning it: the owner is held in a
    tuple, not as a submodule, so its weights are stored once, under the owner's name. timm's
    srelpos ViTs share one relative position MLP between every block this way; the model reads its
    final norm (on the tokens, or on the pooled vector) and its heads through it."""

    def __init__(self, owner: nn.Module):
        super().__init__()
        self.owner = (owner,)  # a tuple: not a submodule

    def forward(self, *inputs):
        return self.owner[0](*inputs)
