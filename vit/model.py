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

The ViT family (DeiT, DeiT-III, DINOv2, CLIP, SigLIP, GAP ViTs) is this same model with a few
named differences: the `ViTConfig` fields below `mlp_ratio`, each off by default. Reading only the
original? Skip every line that tests one of them. vit/families.py lists which family sets which.
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

# The MLP's non-linearity. The original uses the exact (erf) GELU; some families approximate it.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # big_vision's SigLIP models
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI's CLIP
}
POOLS = ("token", "avg", "map")


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shapes (and numerics) of a ViT."""

    img_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000  # 0: no classifier, the model returns the pooled features (a backbone)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6  # timm's; CLIP uses 1e-5, Hugging Face's ViT checkpoints 1e-12
    # --- Where the family differs (timm's argument in brackets); the defaults are the original ViT.
    class_token: bool = True  # SigLIP, GAP ViTs: no CLS token, the head pools the patch tokens instead
    distillation_token: bool = False  # DeiT distilled: a 2nd token taught by a CNN, with its own head [distilled]
    register_tokens: int = 0  # DINOv2-reg, *_reg4_*: learned scratch tokens attention can park in [reg_tokens]
    positions_cover_prefix: bool = True  # DeiT-III, registers: False = positions for patches only [no_embed_class]
    layer_scale: float | None = None  # DeiT-III, DINOv2: residual branches times a learned per-channel
    #                                   scale starting at this value: deep models train stably [init_values]
    qkv_bias: bool = True  # timm's medium GAP ViTs: q, k, v without bias
    patch_bias: bool = True  # CLIP: the patch projection has no bias
    norm_before_blocks: bool = False  # CLIP: a LayerNorm on the embedded tokens before block 1 [pre_norm]
    activation: str = "gelu"  # "quick_gelu": OpenAI's CLIP; "gelu_tanh": some SigLIP [act_layer]
    pool: str = "token"  # what the head reads: "token" (the CLS token), "avg" (mean of the patch
    #                      tokens: GAP ViTs), "map" (attention pooling by a learned query: SigLIP) [global_pool]
    norm_after_pool: bool = False  # GAP ViTs with registers: the final LayerNorm normalises the pooled
    #                                vector instead of every token [fc_norm]

    def __post_init__(self):
        if self.img_size < self.patch_size:
            raise ValueError(f"img_size {self.img_size} is smaller than one patch ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS or self.pool not in POOLS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)} and pool one of {list(POOLS)}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool 'token' reads the CLS token: class_token must be True")

    @property
    def grid_size(self) -> int:
        """Patches per side: 224 // 16 = 14. A remainder is never seen, as by timm's strided
        convolution: SigLIP so400m/14 at 384 px has 27 x 14 = 378, its last 6 pixel rows and
        columns unread."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS (1 in the original), distillation, registers."""
        return int(self.class_token) + int(self.distillation_token) + self.register_tokens

    @property
    def num_tokens(self) -> int:
        """T in the shapes: the prefix tokens, then the patches (197 for ViT-B/16 at 224)."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def num_positions(self) -> int:
        """Rows of the position embedding: every token (the original), or only the patches."""
        return self.num_patches + (self.num_prefix_tokens if self.positions_cover_prefix else 0)

    @property
    def forward_macs(self) -> float:
        """Multiply-accumulates of one image's forward pass (17.6 G for ViT-B/16 at 224): per
        block, qkv + output projection (4 D^2 per token), the MLP (2 r D^2 per token) and
        attention's q k^T and weights @ v (2 T^2 D), plus the patch projection (heads: < 2%)."""
        d, t = self.embed_dim, self.num_tokens
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
            cfg.in_channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.projection(images)  # (B, D, H//P, W//P): one D-vector per whole patch
        return rearrange(patches, "b d gh gw -> b (gh gw) d")  # (B, N, D), row-major patch order


class MultiHeadSelfAttention(nn.Module):
    """Every token attends to every token, in `num_heads` independent subspaces."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        # One matmul makes q, k and v for every head at once; its output is laid out
        # (qkv, head, head_dim) along the last axis, as in timm's weights.
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, T, 3*D)
        q, k, v = rearrange(qkv, "b t (qkv h hd) -> qkv b h t hd", qkv=3, h=self.num_heads)
        # softmax(q @ k^T / sqrt(hd)) @ v for each head, by a fused kernel (flash attention on GPU)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, hd)
        x = rearrange(x, "b h t hd -> b t (h hd)")  # heads side by side again: (B, T, D)
        return self.out_proj(x)


class MLP(nn.Module):
    """Per-token feed-forward network: D -> 4D -> D, exact (erf) GELU between in the original."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        hidden_dim = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, cfg.embed_dim)
        self.activation = ACTIVATIONS[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class LayerScale(nn.Module):
    """x * gamma, one learned factor per channel (CaiT; DeiT-III and DINOv2 use it). Started
    small (1e-6 or 1e-5), each block begins close to the identity: deep stacks train stably."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((cfg.embed_dim,), cfg.layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: normalise, transform, add back (the residual stream)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.attention = MultiHeadSelfAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        # Identity in the original ViT; layer scale in DeiT-III and DINOv2.
        self.attention_scale = LayerScale(cfg) if cfg.layer_scale else nn.Identity()
        self.mlp_scale = LayerScale(cfg) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attention_scale(self.attention(self.attention_norm(x)))  # tokens exchange information
        x = x + self.mlp_scale(self.mlp(self.mlp_norm(x)))  # each token is transformed on its own
        return x


class AttentionPooling(nn.Module):
    """SigLIP's head ("MAP": multihead attention pooling): one learned query attends over the
    patch tokens, and the vector it gathers goes through a residual MLP, as in a block."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))  # (1, 1, D), learned
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.kv = nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim)  # keys and values of every token
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.mlp_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, D)
        query = self.q(self.query.expand(tokens.shape[0], -1, -1))  # (B, 1, D)
        q = rearrange(query, "b 1 (h hd) -> b h 1 hd", h=self.num_heads)
        k, v = rearrange(self.kv(tokens), "b n (kv h hd) -> kv b h n hd", kv=2, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, hd): per head, a weighted mean of v
        x = self.out_proj(rearrange(x, "b h 1 hd -> b (h hd)"))  # (B, D)
        return x + self.mlp(self.mlp_norm(x))


class VisionTransformer(nn.Module):
    """ViT classifier. `forward_features` gives the normed tokens, `forward` the logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embedding = PatchEmbedding(cfg)
        # The CLS token carries no image content; through attention it gathers a summary of
        # the patches, and the classifier reads only it.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.distillation_token else None
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.register_tokens, dim)) if cfg.register_tokens else None
        # Attention is blind to order, so each position (CLS + every patch) gets a learned vector.
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_positions, dim))
        self.norm_before_blocks = nn.LayerNorm(dim, eps=cfg.layer_norm_eps) if cfg.norm_before_blocks else nn.Identity()
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attention_pool = AttentionPooling(cfg) if cfg.pool == "map" else None
        self.head = nn.Linear(dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.head_distillation = None  # DeiT distilled: the distillation token's own classifier
        if cfg.distillation_token:
            self.head_distillation = nn.Linear(dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.reset_parameters()
        # Where the weights came from, and the normalisation their inputs need (timm's name for
        # this record); vit.create_model fills it in when it loads pretrained weights.
        self.pretrained_cfg = {"source": None, "mean": DEFAULT_MEAN, "std": DEFAULT_STD}

    def reset_parameters(self) -> None:
        """timm's initialisation: truncated normal (std 0.02) linears and position embedding."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        for token in (self.cls_token, self.register_tokens):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        if self.distillation_token is not None:
            nn.init.trunc_normal_(self.distillation_token, std=0.02)
        if self.attention_pool is not None:
            nn.init.trunc_normal_(self.attention_pool.query, std=self.cfg.embed_dim**-0.5)
        self.reset_head()

    def reset_head(self) -> None:
        """Zero the classifier: a fresh head then predicts uniformly and, at the first steps of a
        fine-tune, sends no random gradients back into the pretrained features."""
        for head in (self.head, self.head_distillation):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens (B, prefix+N, D): CLS first, plus positions."""
        patch_tokens = self.patch_embedding(images)  # (B, N, D)
        prefix = [token.expand(patch_tokens.shape[0], -1, -1)  # (B, 1, D): CLS [, distillation] [, registers]
                  for token in (self.cls_token, self.distillation_token, self.register_tokens) if token is not None]
        if self.cfg.positions_cover_prefix:  # the original: the CLS token has a position entry too
            return torch.cat([*prefix, patch_tokens], dim=1) + self.position_embedding  # (B, 1+N, D)
        return torch.cat([*prefix, patch_tokens + self.position_embedding], dim=1)  # positions: patches only

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final token sequence (B, prefix+N, D), as timm's."""
        x = self.norm_before_blocks(self.embed(images))  # identity but in CLIP
        for block in self.blocks:
            x = block(x)
        return x if self.cfg.norm_after_pool else self.final_norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, T, D) -> logits (B, num_classes): pool one vector, classify it."""
        patch_tokens = features[:, self.cfg.num_prefix_tokens:]  # (B, N, D)
        if self.cfg.pool == "token":
            pooled = features[:, 0]  # the CLS token: (B, D)
        elif self.cfg.pool == "avg":
            pooled = patch_tokens.mean(dim=1)
        else:
            pooled = self.attention_pool(patch_tokens)
        if self.cfg.norm_after_pool:
            pooled = self.final_norm(pooled)
        if self.head_distillation is not None:  # DeiT: both tokens' votes, averaged (as timm infers)
            return (self.head(pooled) + self.head_distillation(features[:, 1])) / 2
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))
