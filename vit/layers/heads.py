"""After the blocks: the final norm (or SAM's neck), the pooling that makes one vector of the
tokens, and the classifier; each a class chosen once, so that `VisionTransformer.forward_head`
asks nothing:

    logits = classify(pooled_norm(pool(tokens)), tokens)          (B, T, D) -> (B, num_classes)

    pool         TokenPooling (the paper's: the CLS token), AveragePooling (GAP ViTs),
                 AttentionPooling (SigLIP's MAP head)
    pooled_norm  the final norm, where it follows the pooling (GAP ViTs with registers, BEiT)
    classify     OneHead (the paper's), DistilledHeads (DeiT distilled: two heads' vote)"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vit.config import ViTConfig
from vit.layers.common import Borrowed, make_norm
from vit.layers.mlp import MLP


class AttentionPooling(nn.Module):
    """SigLIP's head ("MAP": multihead attention pooling): one learned query attends over the
    tokens (the patches; in PE the CLS token too), and the vector it gathers goes through a
    residual MLP, as in a block."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.pool_heads or cfg.num_heads
        self.first_token = 0 if cfg.pool_reads_prefix else cfg.num_prefix_tokens  # the tokens it reads
        self.query = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))  # (1, 1, D), learned
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.kv = nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim)  # keys and values of every token
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.mlp_norm = make_norm(cfg, cfg.embed_dim)
        # its own width (PE), never gated; its fc1 has a bias where the blocks' may not (AIMv2)
        self.mlp = MLP(cfg.embed_dim, int(cfg.embed_dim * (cfg.pool_mlp_ratio or cfg.mlp_ratio)), cfg.activation,
                       in_bias=cfg.proj_bias or cfg.parallel, out_bias=cfg.proj_bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        tokens = tokens[:, self.first_token:]
        query = self.q(self.query.expand(tokens.shape[0], -1, -1))  # (B, 1, D)
        q = rearrange(query, "b 1 (h hd) -> b h 1 hd", h=self.num_heads)
        k, v = rearrange(self.kv(tokens), "b t (kv h hd) -> kv b h t hd", kv=2, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, hd): per head, a weighted mean of v
        x = self.out_proj(rearrange(x, "b h 1 hd -> b (h hd)"))  # (B, D)
        return x + self.mlp(self.mlp_norm(x))


class Neck(nn.Module):
    """SAM's neck, in place of the final norm: the final tokens as a map, 1x1 conv to fewer
    channels, LayerNorm, 3x3 conv, LayerNorm (eps 1e-6, over the channels of each patch):

        (B, R*C, D) -> (B, D, R, C) -> (B, C', R, C) -> (B, R*C, C')"""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.rows = cfg.grid_shape[0]
        channels = cfg.neck_channels
        self.reduce = nn.Conv2d(cfg.embed_dim, channels, kernel_size=1, bias=False)
        self.reduce_norm = nn.LayerNorm(channels, eps=1e-6)
        self.mix = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.mix_norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.reduce(rearrange(tokens, "b (r c) d -> b d r c", r=self.rows))
        x = self.reduce_norm(rearrange(x, "b d r c -> b r c d"))
        x = self.mix(rearrange(x, "b r c d -> b d r c"))
        return self.mix_norm(rearrange(x, "b d r c -> b (r c) d"))


def make_final_norm(cfg: ViTConfig) -> nn.Module:
    if cfg.neck_channels:
        return Neck(cfg)
    if not cfg.final_norm:
        return nn.Identity()
    return make_norm(cfg, cfg.embed_dim, cfg.final_norm_eps)


class TokenPooling(nn.Module):
    """The paper's: the classifier reads the CLS token, the first. (B, T, D) -> (B, D)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class AveragePooling(nn.Module):
    """GAP ViTs: the mean of the patch tokens, the prefix tokens (CLS, registers) left out."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.first_patch = cfg.num_prefix_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, D)
        return tokens[:, self.first_patch:].mean(dim=1)


class OneHead(nn.Module):
    """The paper's classifier: the model's `head` on the pooled vector (B, D) -> (B, num_classes)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = Borrowed(head)

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)


class DistilledHeads(OneHead):
    """DeiT distilled: the distillation token (the second) has a head of its own, taught by a CNN;
    at inference both heads vote, averaged (as timm infers)."""

    def __init__(self, head: nn.Module, head_distillation: nn.Module):
        super().__init__(head)
        self.head_distillation = Borrowed(head_distillation)

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return (self.head(pooled) + self.head_distillation(tokens[:, 1])) / 2


def make_pool(cfg: ViTConfig, attention_pool: nn.Module | None) -> nn.Module:
    """The pooling the config names; the model owns the attention pool's weights (`attention_pool`)."""
    return {"token": TokenPooling, "avg": lambda: AveragePooling(cfg), "map": lambda: Borrowed(attention_pool)}[cfg.pool]()
