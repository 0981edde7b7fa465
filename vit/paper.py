"""The Vision Transformer of the paper, and nothing else (Dosovitskiy et al. 2020, "An Image is
Worth 16x16 Words"). Read this file first: vit/model.py is this same model plus every family
the project loads (README, "Learning ViT"). For ViT-B/16 at 224 px:

    image (B, 3, 224, 224)
      -> 14 x 14 patches of 16 x 16 px, each projected to a 768-d token           (B, 196, 768)
      -> a learned CLS token in front, a learned position vector added to each    (B, 197, 768)
      -> 12 encoder blocks: x + attention(norm(x)), then x + mlp(norm(x))         (B, 197, 768)
      -> the final LayerNorm, then a linear classifier on the CLS token          (B, num_classes)

The symbols in the shapes, defined once:

    B  images in a batch          P   a patch's side in pixels (16)
    N  patches, (H / P) (W / P)   T   tokens, T = 1 + N: the CLS token, then the patches
    D  a token's width (768)      H   attention heads (12); hd = D / H, one head's width (64)

Where this differs from the paper, on purpose:
  - no dropout: the released weights are used for fine-tuning and inference, where it is off;
  - the head is one Linear layer, the paper's fine-tuning head, not its pre-training MLP head;
  - `build(img_size=...)` makes a fresh table for another size; the paper (and vit/model.py,
    when it loads weights) interpolates the trained one in 2-D instead;
  - square images only: the paper's, and its weights', and the position table is square;
  - the initialisation is timm's (and the general model's), which the released weights came from:
    truncated normal (std 0.02) for every Linear layer and the positions, zero biases, the CLS
    token at N(0, 1e-6) and a zero head (a fresh head predicts uniformly at its first step).

The parameter names are vit/model.py's, so `build(name).load_state_dict(vit.create_model(name,
pretrained=...).state_dict())` loads any weights the general model loads for these names (timm's,
the JAX originals, ...) and gives the same logits (tests/test_paper.py). Only torch and einops.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass(frozen=True)
class Config:
    """The paper's hyperparameters. The defaults are ViT-B/16 (the paper's Table 1, "Base")."""

    img_size: int = 224  # the image's side in pixels
    patch_size: int = 16  # P: each token is a P x P patch
    num_classes: int = 1000  # 0: no classifier, the model returns the CLS token's features (B, D)
    embed_dim: int = 768  # D, the width of every token ("Hidden size D")
    depth: int = 12  # encoder blocks ("Layers")
    num_heads: int = 12  # H: attention heads, each of width hd = D / H
    mlp_ratio: float = 4.0  # the MLP's hidden width is mlp_ratio * D ("MLP size" 3072)


EPS = 1e-6  # LayerNorm's epsilon in the released weights (big_vision's and timm's; PyTorch's default is 1e-5)


class PatchEmbedding(nn.Module):
    """Cut the image into P x P patches and project each, flattened, to a D-dim token (the paper's
    Eq. 1, x_p E). A convolution with kernel = stride = P is exactly that Linear(3 P^2 -> D), applied per patch."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.projection = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.projection(images)  # (B, D, H/P, W/P): one D-vector per patch
        return rearrange(patches, "b d gh gw -> b (gh gw) d")  # (B, N, D), patches in reading order


class MultiHeadSelfAttention(nn.Module):
    """Every token looks at every token: the paper's Appendix A, Eq. 5-8. Per head h, with q, k, v
    linear maps of the tokens:

        attention_h = softmax(q_h k_h^T / sqrt(hd)) v_h          (B, T, hd)

    Row i of the softmax says how much token i reads from each token j (the row sums to 1); the
    1 / sqrt(hd) keeps the logits' scale independent of the width, so the softmax does not
    saturate. The heads' outputs, side by side (B, T, D), are mixed by one more linear map."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)  # q, k and v of all heads in one matmul
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        # qkv's 3D outputs are laid out as the released weights store them: all of q, then all of
        # k, then all of v (the "qkv" axis), each H heads of hd channels side by side.
        qkv = rearrange(self.qkv(x), "b t (qkv h hd) -> qkv b h t hd", qkv=3, h=self.num_heads)
        q, k, v = qkv  # (B, H, T, hd) each
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, H, T, T): token i's score for token j
        weights = logits.softmax(dim=-1)  # (B, H, T, T), rows sum to 1
        heads = weights @ v  # (B, H, T, hd): per head, a weighted mean of the values
        return self.out_proj(rearrange(heads, "b h t hd -> b t (h hd)"))  # (B, T, D)


class MLP(nn.Module):
    """The same two-layer network for every token on its own (the paper's Eq. 3): D -> 4D -> D, GELU between."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))
        self.fc2 = nn.Linear(int(cfg.embed_dim * cfg.mlp_ratio), cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, 4D) -> (B, T, D)
        return self.fc2(F.gelu(self.fc1(x)))  # the exact (erf) GELU


class EncoderBlock(nn.Module):
    """One Transformer encoder block, pre-norm (the paper's Eq. 2 and 3):

        x = x + MSA(LN(x))      tokens exchange information
        x = x + MLP(LN(x))      each token is transformed on its own

    The residual stream x is never normalised itself, so a deep stack trains stably."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.embed_dim, eps=EPS)
        self.attention = MultiHeadSelfAttention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.embed_dim, eps=EPS)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class VisionTransformer(nn.Module):
    """The paper's Eq. 1-4: embed the patches, run the encoder, classify the CLS token."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        num_patches = (cfg.img_size // cfg.patch_size) ** 2  # N = 196 for 224 px and P = 16
        self.patch_embedding = PatchEmbedding(cfg)
        # The CLS token holds no image content: through attention it gathers a summary of the
        # patches, and the classifier reads only it.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))  # (1, 1, D)
        # Attention is blind to order: each position (CLS and every patch) gets a learned vector.
        self.position_embedding = nn.Parameter(torch.zeros(1, 1 + num_patches, cfg.embed_dim))  # (1, T, D)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=EPS)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's initialisation, as the general model's (the module docstring says why)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.cfg.num_classes:  # (a backbone has no head to zero)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes), or (B, D) if 0
        patches = self.patch_embedding(images)  # (B, N, D)
        cls = self.cls_token.expand(images.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, patches], dim=1) + self.position_embedding  # (B, T, D): Eq. 1
        for block in self.blocks:
            x = block(x)  # (B, T, D): Eq. 2, 3
        x = self.final_norm(x)  # (B, T, D): Eq. 4's LN
        return self.head(x[:, 0])  # (B, num_classes), or (B, D) without a classifier: the CLS token alone


# The paper's sizes (its Table 1; "Tiny" and "Small" are DeiT's): width D, depth, heads.
SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
         "huge": (1280, 32, 16)}
# Every name of vit/families.py whose model is this one (tests/test_paper.py checks it), and the
# classes of its default weights: 0 for a backbone released without a classifier (ImageNet-21k, DINO).
NAMES = {"vit_tiny_patch16_224": 1000, "vit_tiny_patch16_384": 1000, "vit_small_patch8_224": 0,
         "vit_small_patch16_224": 1000, "vit_small_patch16_384": 1000, "vit_small_patch32_224": 1000,
         "vit_small_patch32_384": 1000, "vit_base_patch8_224": 1000, "vit_base_patch16_224": 1000,
         "vit_base_patch16_384": 1000, "vit_base_patch32_224": 1000, "vit_base_patch32_384": 1000,
         "vit_large_patch14_224": 1000, "vit_large_patch16_224": 1000, "vit_large_patch16_384": 1000,
         "vit_large_patch32_224": 0, "vit_large_patch32_384": 1000, "vit_huge_patch14_224": 0,
         "deit_tiny_patch16_224": 1000, "deit_small_patch16_224": 1000, "deit_base_patch16_224": 1000,
         "deit_base_patch16_384": 1000}  # DeiT: the same model, trained on ImageNet-1k alone
WITHOUT_WEIGHTS = {"vit_large_patch14_224"}  # a name timm keeps, but publishes no weights for


def build(name: str, num_classes: int | None = None, img_size: int | None = None) -> VisionTransformer:
    """The paper's ViT called `name` (one of NAMES), e.g. build("vit_base_patch16_224", num_classes=10).
    img_size: None is the size in the name; another gives a fresh position table for that size."""
    if name not in NAMES:
        raise ValueError(f"'{name}' is not one of the paper's ViTs here: {', '.join(NAMES)}")
    size, patch, side = re.fullmatch(r"(?:vit|deit)_(\w+)_patch(\d+)_(\d+)", name).groups()
    width, depth, heads = SIZES[size]
    return VisionTransformer(Config(img_size=img_size or int(side), patch_size=int(patch), embed_dim=width,
                                    depth=depth, num_heads=heads,
                                    num_classes=NAMES[name] if num_classes is None else num_classes))
