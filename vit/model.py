"""A Vision Transformer (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words"), top to bottom.

The picture to keep in mind, for ViT-B/16 at 224 px:

    image (B, 3, 224, 224)
      -> cut into 14 x 14 patches of 16 x 16 px, each projected to a 768-d token   (B, 196, 768)
      -> prepend a learned CLS token, add learned position embeddings              (B, 197, 768)
      -> 12 encoder blocks: x + attention(norm(x)), then x + mlp(norm(x))          (B, 197, 768)
      -> final LayerNorm                                                           (B, 197, 768)
      -> classifier on the CLS token                                               (B, num_classes)

Every numerical choice matches timm's `VisionTransformer` (pre-norm blocks, one fused qkv
projection, LayerNorm eps 1e-6, exact GELU, CLS token concatenated *before* the position
embedding is added), so timm's pretrained weights load and give the same outputs.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


# The input normalisation timm's ViT weights expect (x - 0.5) / 0.5 per channel; other weights
# carry their own, and `vit.create_model` records it in `model.pretrained_cfg`.
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shapes (and numerics) of a ViT."""

    img_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6  # timm's; Hugging Face's ViT checkpoints use 1e-12

    def __post_init__(self):
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def grid_size(self) -> int:
        """Patches per side: 224 // 16 = 14."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def forward_macs(self) -> float:
        """Multiply-accumulates of one image's forward pass (17.6 G for ViT-B/16 at 224): per
        block, qkv + output projection (4 D^2 per token), the MLP (2 r D^2 per token) and
        attention's q k^T and weights @ v (2 T^2 D), plus the patch projection."""
        d, t = self.embed_dim, self.num_patches + 1
        per_block = 4 * d * d * t + 2 * self.mlp_ratio * d * d * t + 2 * t * t * d
        return self.depth * per_block + self.num_patches * d * self.in_channels * self.patch_size**2


class PatchEmbedding(nn.Module):
    """Cut the image into non-overlapping P x P patches and project each one to a D-dim token.

    Why a convolution: with kernel_size = stride = P the kernel visits each patch exactly once,
    and its output for patch (i, j) is

        out[d, i, j] = b[d] + sum_{c, u, v} W[d, c, u, v] * image[c, i*P + u, j*P + v]

    which is a Linear(C*P*P -> D) applied to the patch flattened in (c, u, v) order, with the
    linear weight equal to W.reshape(D, C*P*P). Same numbers, but one fast conv call instead of a
    rearrange plus matmul (tests/test_model.py checks the equivalence). timm stores it this way.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            cfg.in_channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.projection(images)  # (B, D, H/P, W/P): one D-vector per patch
        return rearrange(patches, "b d gh gw -> b (gh gw) d")  # (B, N, D), row-major patch order


class MultiHeadSelfAttention(nn.Module):
    """Every token attends to every token, in `num_heads` independent subspaces."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        # One matmul makes q, k and v for every head at once; its output is laid out
        # (qkv, head, head_dim) along the last axis, as in timm's weights.
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, T, 3*D)
        q, k, v = rearrange(qkv, "b t (qkv h hd) -> qkv b h t hd", qkv=3, h=self.num_heads)
        # softmax(q @ k^T / sqrt(hd)) @ v for each head, by a fused kernel (flash attention on GPU)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, hd)
        x = rearrange(x, "b h t hd -> b t (h hd)")  # heads side by side again: (B, T, D)
        return self.out_proj(x)


class MLP(nn.Module):
    """Per-token feed-forward network: D -> 4D -> D with exact (erf) GELU between."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        hidden_dim = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: normalise, transform, add back (the residual stream)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.attention = MultiHeadSelfAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attention(self.attention_norm(x))  # tokens exchange information
        x = x + self.mlp(self.mlp_norm(x))  # each token is transformed on its own
        return x


class VisionTransformer(nn.Module):
    """ViT classifier. `forward_features` gives the normed tokens, `forward` the logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = PatchEmbedding(cfg)
        # The CLS token carries no image content; through attention it gathers a summary of
        # the patches, and the classifier reads only it.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        # Attention is blind to order, so each position (CLS + every patch) gets a learned vector.
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.embed_dim))
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.reset_parameters()
        # Where the weights came from, and the normalisation their inputs need (timm's name for
        # this record); vit.create_model fills it in when it loads pretrained weights.
        self.pretrained_cfg = {"source": None, "mean": DEFAULT_MEAN, "std": DEFAULT_STD}

    def reset_parameters(self) -> None:
        """timm's initialisation: truncated normal (std 0.02) linears and position embedding."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.reset_head()

    def reset_head(self) -> None:
        """Zero the classifier: a fresh head then predicts uniformly and, at the first steps of a
        fine-tune, sends no random gradients back into the pretrained features."""
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens (B, 1+N, D): patches, CLS first, plus positions."""
        patch_tokens = self.patch_embedding(images)  # (B, N, D)
        cls_tokens = self.cls_token.expand(patch_tokens.shape[0], -1, -1)  # (B, 1, D)
        tokens = torch.cat([cls_tokens, patch_tokens], dim=1)  # (B, 1+N, D)
        return tokens + self.position_embedding  # the CLS token has a position entry too

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final normed token sequence (B, 1+N, D), as timm's."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, 1+N, D) -> logits (B, num_classes), read off the CLS token."""
        return self.head(features[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


# The configurations of timm's names. Image size is free (any multiple of the patch size).
MODEL_CONFIGS: dict[str, dict] = {
    "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_base_patch32_224": dict(patch_size=32, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
}

# timm's default ImageNet weights for each name: ImageNet-21k pretrain, ImageNet-1k fine-tune.
DEFAULT_PRETRAINED: dict[str, str] = {
    "vit_tiny_patch16_224": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small_patch16_224": "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_224": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit_base_patch32_224": "timm/vit_base_patch32_224.augreg_in21k_ft_in1k",
    "vit_large_patch16_224": "timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
}


def model_config(name: str, **overrides) -> ViTConfig:
    """The ViTConfig of a model name, with fields such as num_classes or img_size overridden."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model '{name}'; known models: {', '.join(MODEL_CONFIGS)}")
    return ViTConfig(**{**MODEL_CONFIGS[name], **overrides})
