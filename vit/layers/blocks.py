"""Encoder blocks, one class per kind, chosen once by `make_block`: the paper's pre-norm
EncoderBlock, PostNormBlock, ParallelBlock (ViT-22B), BranchedBlock ("three things"),
WindowedBlock (SAM); and CaiT's class-attention stage, which runs after them."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vit.config import ViTConfig
from vit.layers.attention import ClassAttention, MultiHeadSelfAttention, make_attention
from vit.layers.common import LayerScale, drop_path_for, make_norm
from vit.layers.mlp import MLP, make_mlp
from vit.layers.positions import IDENTITY, Rotation


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: normalise, transform, add back (the residual stream).

        x = x + attention(norm(x))      tokens exchange information
        x = x + mlp(norm(x))            each token is transformed on its own

    (times a layer scale, and with drop path in training, where the model has them)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__()
        self.drop_path = drop_path_for(cfg, index)  # stochastic depth in training, where asked for
        self.attention_norm = make_norm(cfg, cfg.embed_dim)
        self.attention = make_attention(cfg, index)
        self.mlp_norm = make_norm(cfg, cfg.embed_dim)
        self.mlp = make_mlp(cfg)
        # Identity in the original ViT; layer scale in DeiT-III, DINOv2, BEiT, DINOv3.
        self.attention_scale = LayerScale(cfg) if cfg.layer_scale else nn.Identity()
        self.mlp_scale = LayerScale(cfg) if cfg.layer_scale and cfg.layer_scale_mlp else nn.Identity()

    def forward(self, x: torch.Tensor, rotation: Rotation = IDENTITY) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attention_branch(x, rotation)
        return x + self.mlp_branch(x)

    def attention_branch(self, x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): what attention adds to the residual stream."""
        return self.drop_path(self.attention_scale(self.attention(self.attention_norm(x), rotation)))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D): what the MLP adds to the residual stream."""
        return self.drop_path(self.mlp_scale(self.mlp(self.mlp_norm(x))))

    @property
    def attentions(self) -> list[MultiHeadSelfAttention]:
        return [self.attention]


# --- Other blocks: each a class, chosen once by make_block.


class PostNormBlock(EncoderBlock):
    """Res-post-norm (Swin v2; timm's rpn ViT, EVA-02 enormous): each branch's output is normalised
    before it is added, x + norm(f(x)), instead of x + f(norm(x)). (No layer scale.)"""

    def forward(self, x: torch.Tensor, rotation: Rotation = IDENTITY) -> torch.Tensor:
        x = x + self.drop_path(self.attention_norm(self.attention(x, rotation)))
        return x + self.drop_path(self.mlp_norm(self.mlp(x)))


class ParallelBlock(nn.Module):
    """ViT-22B's parallel block (Dehghani et al. 2023; timm's *_xp_*, pwee): attention and MLP read
    the same norm(x) side by side, and their sum is added once:

        x = x + ls(attention(norm(x)) + mlp(norm(x)))"""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__()
        self.drop_path = drop_path_for(cfg, index)
        self.attention_norm = make_norm(cfg, cfg.embed_dim)  # the one norm both branches read
        self.attention = make_attention(cfg, index)
        # timm's differential parallel block projects [attention; MLP] with one matrix and one bias:
        # the bias is the attention's out_proj's here, and the MLP's fc2 has none.
        self.mlp = make_mlp(cfg, out_bias=not cfg.differential)
        self.attention_scale = LayerScale(cfg) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, rotation: Rotation = IDENTITY) -> torch.Tensor:
        h = self.attention_norm(x)
        return x + self.drop_path(self.attention_scale(self.attention(h, rotation) + self.mlp(h)))

    @property
    def attentions(self) -> list[MultiHeadSelfAttention]:
        return [self.attention]


class BranchedBlock(nn.Module):
    """`branches` encoder blocks side by side ("Three things everyone should know about Vision
    Transformers", Touvron et al. 2022): their attention branches read the same x and are summed,
    then their MLP branches likewise. Wider and shallower for the same weights: timm's 18x2 has
    36 blocks' weights at the depth of 18."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__()
        self.branches = nn.ModuleList(EncoderBlock(cfg, index) for _ in range(cfg.branches))

    def forward(self, x: torch.Tensor, rotation: Rotation = IDENTITY) -> torch.Tensor:
        x = x + sum(branch.attention_branch(x, rotation) for branch in self.branches)
        return x + sum(branch.mlp_branch(x) for branch in self.branches)

    @property
    def attentions(self) -> list[MultiHeadSelfAttention]:
        return [branch.attention for branch in self.branches]


class WindowedBlock(EncoderBlock):
    """SAM's and ViTDet's block (Li et al. 2022, "Exploring Plain Vision Transformer Backbones"):
    attention within non-overlapping S x S windows of the patch grid, so its cost grows with the
    number of patches, not its square; a few global blocks (plain EncoderBlocks) connect the
    windows. The normed grid is zero-padded at the bottom and right to a multiple of S, and the
    padding tokens take part as keys (as in SAM); the MLP is the original's.

        (B, R*C, D) -> pad -> (B * windows, S*S, D) -> attention -> (B, R*C, D)"""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.grid, self.window = cfg.grid_shape, cfg.window_size

    def attention_branch(self, x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
        (rows, columns), s = self.grid, self.window
        grid = rearrange(self.attention_norm(x), "b (r c) d -> b r c d", r=rows)
        grid = F.pad(grid, (0, 0, 0, -columns % s, 0, -rows % s))  # (B, R', C', D), multiples of S
        windows = rearrange(grid, "b (wr s) (wc t) d -> (b wr wc) (s t) d", s=s, t=s)  # (B*W, S*S, D)
        out = self.attention(windows, rotation)
        grid = rearrange(out, "(b wr wc) (s t) d -> b (wr s) (wc t) d", b=x.shape[0], wr=grid.shape[1] // s, s=s)
        return self.drop_path(self.attention_scale(rearrange(grid[:, :rows, :columns], "b r c d -> b (r c) d")))


def make_block(cfg: ViTConfig, index: int) -> nn.Module:
    if cfg.window_size and index not in cfg.global_blocks:
        return WindowedBlock(cfg, index)
    if cfg.parallel:
        return ParallelBlock(cfg, index)
    if cfg.branches > 1:
        return BranchedBlock(cfg, index)
    return PostNormBlock(cfg, index) if cfg.post_norm else EncoderBlock(cfg, index)


# --- CaiT's class attention: the CLS token joins after the blocks (VisionTransformer.class_attention).


class NoClassAttention(nn.Module):
    """The original: the CLS token went through the blocks with the patches; nothing joins after."""

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None) -> torch.Tensor:
        return x


class ClassAttentionBlock(nn.Module):
    """A block for the CLS token alone, pre-norm with layer scale as CaiT's patch blocks:

        cls = cls + ls(class_attention(norm([cls; patches])))
        cls = cls + ls(mlp(norm(cls)))"""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention_norm = make_norm(cfg, cfg.embed_dim)
        self.attention = ClassAttention(cfg)
        self.mlp_norm = make_norm(cfg, cfg.embed_dim)
        self.mlp = MLP(cfg.embed_dim, 4 * cfg.embed_dim, cfg.activation)  # always 4x [mlp_ratio_token_only]
        self.attention_scale = LayerScale(cfg)
        self.mlp_scale = LayerScale(cfg)

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:  # (B, N, D), (B, 1, D) -> (B, 1, D)
        cls = cls + self.attention_scale(self.attention(self.attention_norm(torch.cat([cls, patches], dim=1))))
        return cls + self.mlp_scale(self.mlp(self.mlp_norm(cls)))


class ClassAttentionStage(nn.Module):
    """CaiT (Touvron et al. 2021, "Going deeper with Image Transformers"): the blocks work on the
    patches alone; the CLS token joins after them, in a few class-attention blocks that update it
    alone (ClassAttentionBlock), then stands in front of the patches for the final norm and the
    head. Self-attention among patches and summarising them for the classifier are two stages."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.blocks = nn.ModuleList(ClassAttentionBlock(cfg) for _ in range(cfg.class_attention_blocks))

    def forward(self, patches: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, 1+N, D)
        cls = cls_token.expand(patches.shape[0], -1, -1)  # (B, 1, D)
        for block in self.blocks:
            cls = block(patches, cls)
        return torch.cat([cls, patches], dim=1)
