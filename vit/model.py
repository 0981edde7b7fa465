"""The general ViT: the paper's model (vit/paper.py; read that first) with a slot for each way
the families that timm names differ from it, so that one model loads all of them.

The path of the original ViT-B/16, `ViTConfig()` with its defaults, is the first half of this
file and reads as vit/paper.py does:

    image (B, 3, 224, 224)
      -> cut into 14 x 14 patches of 16 x 16 px, each projected to a 768-d token   (B, 196, 768)
      -> prepend a learned CLS token, add learned position embeddings              (B, 197, 768)
      -> 12 encoder blocks: x + attention(norm(x)), then x + mlp(norm(x))         (B, 197, 768)
      -> final LayerNorm                                                           (B, 197, 768)
      -> classifier on the CLS token                                               (B, num_classes)

Every numerical choice matches timm's `VisionTransformer` (pre-norm blocks, one fused qkv
projection, LayerNorm eps 1e-6, exact GELU, CLS token concatenated *before* the position
embedding is added), so timm's pretrained weights load and give the same outputs.

What the general model adds, each a `ViTConfig` field (off by default) and, where it changes
computation, a class of its own in the second half of the file, picked once by the make_*
functions at its end. No forward method asks which family it runs:

    where the tokens come from the image's patches (PatchEmbedding), or a CNN stem's feature map
                               (HybridPatchEmbedding: the paper's ResNet hybrids, vit/stems.py)
    where positions enter      a learned table added to the tokens (the original; AddPositions,
                               or AddPositionsToPatches), rotary (AxialRope, DinoV3Rope, MixedRope
                               hand each block a Rotation of q and k), or a bias on the logits in
                               attention's `relative_bias` slot: BEiT's RelativePositionBias table, or
                               timm's relpos ViTs' RelativePositionMlp (SharedRelativeBias: one MLP
                               for all blocks); SAM's DecomposedRelativePositions, read by each query
    the attention              QVBiasAttention (no key bias), GroupedQueryAttention (fewer key/value
                               heads), DifferentialSelfAttention (two softmax maps, one subtracted),
                               TalkingHeadsAttention (CaiT: the heads' maps mixed)
    the MLP and the norm       GatedMLP (SwiGLU); RMSNorm instead of LayerNorm (make_norm)
    the block                  PostNormBlock (x + norm(f(x))), ParallelBlock (ViT-22B: attention and
                               MLP from one norm), BranchedBlock (several blocks side by side),
                               WindowedBlock (SAM: attention within windows of the grid)
    the tokens and the head    distillation and register tokens, mean or attention pooling, a norm
                               after the pooling (VisionTransformer.forward_head); CaiT's CLS token,
                               which joins after the blocks (ClassAttentionStage); SAM's Neck in
                               place of the final norm

All position schemes meet the logits in one line of `MultiHeadSelfAttention.forward`:

    out = softmax(rotation(q) rotation(k)^T / sqrt(head_dim) + relative_bias) v     (B, heads, T, hd)

vit/families.py says which family sets which fields; README, "The model", has the figures.
"""

import math
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from vit import features, naflex
from vit.stems import STEMS, make_stem, stem_channels, stem_stride
from weights.load import POSITION_RESIZES, resize_grid


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
ROPES = (None, "axial", "dinov3", "mixed")
NORMS = ("layernorm", "rmsnorm")
RESIZES = tuple(POSITION_RESIZES)  # weights/load.py says what each does


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shapes (and numerics) of a ViT. `ViTConfig()` is the paper's
    ViT-B/16 at 224 px (vit_base_patch16_224); vit/families.py gives every other name's fields."""

    img_size: int | tuple[int, int] = 224  # a side, or (height, width): Sapiens2 is 1024 x 768
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
    final_norm: bool = True  # RADIO, InternViT, PE lang/spatial: no norm at the end at all [final_norm]
    pool_heads: int | None = None  # PE: its attention pool has 8 heads (None: num_heads) [attn_pool_num_heads]
    pool_mlp_ratio: float | None = None  # PE gigantic: its pool's MLP is 4x (None: mlp_ratio) [attn_pool_mlp_ratio]
    pool_reads_prefix: bool = False  # PE: the attention pool reads the CLS token too, not only the patches
    position_resize: str = "bicubic"  # how the position table is resized for another image size, as the code
    #                                   base of the weights does it (POSITION_RESIZES): bicubic, antialiased
    #                                   (timm's default); "bilinear" (FlexiViT, RADIO, timm's .npz reader);
    #                                   "bicubic_plain" (transformers); "bicubic_offset" (Meta's DINOv2)
    # --- The modern family: positions, the MLP and the norm (the three pieces of the module docstring).
    absolute_positions: bool = True  # the learned table added to the tokens; False in BEiT, DINOv3, most
    #                                  RoPE models: attention alone sees positions [use_abs_pos_emb]
    rope: str | None = None  # rotary positions on q and k (see RotaryPositions): "axial" (EVA-02, PE,
    #                          RoPE-ViT), "dinov3" (DINOv3's periods, coordinates in [-1, 1]), "mixed"
    #                          (RoPE-ViT mixed: learned frequencies per block and head) [rope_type]
    rope_temperature: float = 10000.0  # the base of the frequency ladder (100 in DINOv3 and RoPE-ViT)
    rope_xy: bool = False  # which axis the first half of the frequencies follows: x (PE, RoPE-ViT) or y
    #                        (EVA-02, DINOv3) [rope_grid_indexing="xy"]
    rope_offset: float = 0.0  # PE: patch coordinates count from 1 [rope_grid_offset]
    rope_reference_grid: int | None = None  # EVA-02, PE: coordinates rescaled so the grid spans the
    #                                         pretraining grid at any image size [ref_feat_shape]
    relative_position_bias: bool = False  # BEiT: every block adds a learned bias per head and (dy, dx)
    #                                       offset to the attention logits [use_rel_pos_bias]
    relative_position_mlp: int = 0  # timm's relpos ViTs: every block's bias per (dy, dx) offset comes from an
    #                                 MLP of this hidden width on the log-spaced offset (0: none) [rel_pos_dim]
    relative_position_shared: bool = False  # timm's srelpos: one such MLP for all blocks, held by the model [shared_rel_pos]
    key_bias: bool = True  # BEiT, EVA, DINOv3: q and v have a bias, k none (with RoPE it would not cancel)
    proj_bias: bool = True  # AIMv2: the attention output and the MLP without bias
    gated_mlp: bool = False  # SwiGLU: silu(x W_gate) * (x W_value) -> W_out, hidden int(D * mlp_ratio)
    #                          (EVA-02, AIMv2, DINOv2 giant, DINOv3 S+/H+/7B) [swiglu_mlp, GluMlp]
    mlp_inner_norm: bool = False  # EVA-02: a norm on the MLP's hidden layer, before its output [scale_mlp]
    attention_inner_norm: bool = False  # EVA-02 CLIP: a norm on the heads' output before out_proj [scale_attn_inner]
    norm: str = "layernorm"  # "rmsnorm": x / rms(x) * w, no mean subtracted, no bias (AIMv2) [norm_layer]
    norm_after_patches: bool = False  # AIMv2: a norm on the patch tokens, before the positions [embed_norm_layer]
    post_norm: bool = False  # res-post-norm (Swin v2; timm's rpn ViT, EVA-02 enormous): each branch's output
    #                          is normalised before it is added, x + norm(f(x)), instead of x + f(norm(x))
    # --- Other blocks and heads (the module docstring's last paragraph).
    parallel: bool = False  # ViT-22B (Dehghani et al. 2023): attention and MLP read the same norm(x), side by
    #                         side: x + ls(attention(h) + mlp(h)); timm's *_xp_*, pwee [ParallelScalingBlock]
    branches: int = 1  # "Three things" (Touvron et al. 2022): each block runs this many attentions side by side,
    #                    summed, then as many MLPs (timm's 18x2: 18 blocks of 2) [ParallelThingsBlock]
    qk_norm: bool = False  # a norm on each head's q and k before the logits, which keeps them bounded (ViT-22B,
    #                        Sapiens2)
    differential: bool = False  # Differential attention (Ye et al. 2024): two softmax maps per head, the second
    #                             subtracted with a learned weight (see DifferentialSelfAttention) [attn_layer='diff']
    kv_heads: int | None = None  # grouped-query attention: this many key/value heads, each shared by
    #                              num_heads / kv_heads query heads (Sapiens2's middle blocks) [num_kv_heads]
    full_attention_ends: int = 0  # Sapiens2: the first and the last this many blocks keep all key/value heads
    layer_scale_mlp: bool = True  # False: layer scale on the attention branch only (Sapiens2) [attn_only_layer_scale]
    # --- NaFlex (SigLIP 2, RADIO): any size and aspect, the table resized at every forward (NaFlexPatchEmbedding).
    naflex: bool = False  # patches through a Linear, pixels in (row, column, channel) order, plus the patch
    #                       embedding's own table, kept at its grid and resized to each input's [NaFlexVit]
    position_grid: int = 16  # NaFlex: the side of the stored table (RADIO: 128) [pos_embed_grid_size]
    position_keeps_aspect: bool = False  # NaFlex: resized to a square of the longer side, its top-left corner
    #                                      taken, so a patch's position does not stretch with the aspect
    #                                      [pos_embed_ar_preserving]
    factorized_positions: bool = False  # NaFlex: a table per axis, rows and columns, summed [pos_embed='factorized']
    # --- The ViT paper's hybrids: a CNN stem's feature map in place of the image's patches (vit/stems.py).
    stem: str | None = None  # "bit" (the paper's ResNet, BiT's), "resnet_d", "mobileclip" (stems.STEMS)
    stem_depths: tuple[int, ...] = ()  # Bottleneck blocks per ResNet stage: (3, 4, 9) is ResNet-50's first
    #                                    three, stride 16 (the paper's R50+ViT-B/16); () the stem conv alone
    # --- SAM's image encoder (Segment Anything; ViTDet's backbone).
    window_size: int = 0  # attention within non-overlapping windows of this many patches a side (0: global)
    #                       in every block but global_blocks [window_size]
    global_blocks: tuple[int, ...] = ()  # the blocks that attend globally among windowed ones [global_attn_indexes]
    decomposed_relative_positions: bool = False  # SAM: a learned vector per row offset and per column offset,
    #                                              read by the query into a bias on the logits [use_rel_pos]
    neck_channels: int = 0  # SAM: a neck after the blocks, 1x1 conv to this many channels, LayerNorm, 3x3
    #                         conv, LayerNorm, instead of the final norm (0: none) [neck_chans]
    final_norm_eps: float | None = None  # the final norm's eps where it differs from the blocks' (SAM: 1e-6)
    talking_heads: bool = False  # CaiT: the heads' logits, and their weights, mixed across heads (TalkingHeadsSoftmax)
    class_attention_blocks: int = 0  # CaiT: the CLS token skips the blocks and joins after them, in this many
    #                                  class-attention blocks that update it alone [depth_token_only]
    # --- Training only: identity at evaluation, so no checkpoint records it.
    drop_path_rate: float = 0.0  # stochastic depth (Huang et al. 2016): in training, each residual branch is
    #                              skipped for a random subset of the samples, block i with probability
    #                              drop_path_rate * i / (depth - 1), rising to this at the last block [drop_path_rate]

    def __post_init__(self):
        if self.naflex and (self.absolute_positions or self.stem or self.window_size or self.rope):
            raise ValueError("NaFlex's patch embedding holds its own position table: absolute_positions=False, "
                             "no stem, windows or RoPE")
        if self.stem is not None and self.stem not in STEMS:
            raise ValueError(f"stem must be one of {list(STEMS)}, not {self.stem!r}")
        if min(self.image_shape) < self.token_stride:
            raise ValueError(f"img_size {self.img_size} is smaller than one patch ({self.token_stride} px)")
        if self.stem and any(side % self.token_stride for side in self.image_shape):
            raise ValueError(f"img_size {self.img_size}: a hybrid's image sides are multiples of its {self.token_stride} "
                             "px per token")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS or self.pool not in POOLS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)} and pool one of {list(POOLS)}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool 'token' reads the CLS token: class_token must be True")
        if self.rope not in ROPES or self.norm not in NORMS or self.position_resize not in RESIZES:
            raise ValueError(f"rope must be one of {list(ROPES)}, norm one of {list(NORMS)} and "
                             f"position_resize one of {list(RESIZES)}")
        if self.rope and self.head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4 (x and y pairs), not {self.head_dim}")
        if self.relative_position_bias and self.relative_position_mlp:
            raise ValueError("one relative position scheme per model: a bias table (BEiT) or an MLP (relpos)")
        if self.relative_position_shared and not self.relative_position_mlp:
            raise ValueError("relative_position_shared shares a relative position MLP: set its width, relative_position_mlp")
        if self.relative_position_bias and self.num_prefix_tokens != 1:
            raise ValueError("the relative position bias (BEiT) has entries for exactly one prefix token, the CLS token")
        if self.relative_position_bias and self.grid_shape[0] != self.grid_shape[1]:
            raise ValueError("the relative position bias (BEiT) needs a square image")
        if (self.differential or self.kv_heads) and self.qkv_bias and not self.key_bias:
            raise ValueError("q and v biases without a key bias (BEiT, EVA) are not combined with differential or "
                             "grouped-query attention")
        if self.differential and (self.rope or self.kv_heads or self.head_dim % 2):
            raise ValueError("differential attention splits each head in two halves: an even head_dim, no RoPE, no kv_heads")
        if self.kv_heads and self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.class_attention_blocks and (not self.class_token or self.distillation_token or self.register_tokens
                                            or self.positions_cover_prefix):
            raise ValueError("class attention (CaiT) joins a CLS token, and no other prefix token, after the blocks: "
                             "class_token=True, positions for the patches only")
        if self.window_size and (self.num_prefix_tokens or self.rope):
            raise ValueError("windowed attention (SAM) cuts the patch grid alone into windows: no prefix tokens, no RoPE")
        if self.decomposed_relative_positions and (self.num_prefix_tokens or self.relative_position_bias
                                                   or self.relative_position_mlp):
            raise ValueError("decomposed relative positions (SAM) are for patches alone, and one scheme per model")
        if self.talking_heads and (self.differential or self.kv_heads):
            raise ValueError("talking heads (CaiT) mix every head's full map: not with differential or grouped-query attention")
        if self.parallel and (self.branches > 1 or self.post_norm):
            raise ValueError("a parallel block has one attention and one MLP, pre-norm")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate is a probability below 1, not {self.drop_path_rate}")

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) in pixels: (224, 224) for img_size=224."""
        return (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)

    @property
    def token_stride(self) -> int:
        """Pixels per token along a side: the patch size, times a hybrid's stem stride (R50+ViT-B/16:
        patch 1 on a map of stride 16)."""
        return self.patch_size * (stem_stride(self.stem, self.stem_depths) if self.stem else 1)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Patches down and across: 224 // 16 = 14 each. A remainder is never seen, as by timm's
        strided convolution: SigLIP so400m/14 at 384 px has 27 x 14 = 378, its last 6 pixel rows
        and columns unread."""
        return self.grid_for(*self.image_shape)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of tokens for an image of height x width pixels (remainders unread)."""
        return height // self.token_stride, width // self.token_stride

    @property
    def grid_size(self) -> int:
        """Patches per side of a square image (14 for ViT-B/16 at 224)."""
        rows, columns = self.grid_shape
        if rows != columns:
            raise ValueError(f"a {rows} x {columns} patch grid has no single side")
        return rows

    @property
    def num_patches(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: CLS (1 in the original), distillation, registers."""
        return int(self.class_token) + int(self.distillation_token) + self.register_tokens

    @property
    def prefix_in_blocks(self) -> int:
        """Prefix tokens the encoder blocks see: all of them, but CaiT's CLS token, which joins after."""
        return self.num_prefix_tokens - int(self.class_token and self.class_attention_blocks > 0)

    @property
    def num_tokens(self) -> int:
        """T in the shapes: the prefix tokens, then the patches (197 for ViT-B/16 at 224)."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def kv_heads_in(self, block: int) -> int:
        """Key/value heads of block `block`: num_heads, but in grouped-query blocks (Sapiens2: all but the
        first and last `full_attention_ends`)."""
        ends = self.full_attention_ends
        if self.kv_heads is None or block < ends or block >= self.depth - ends:
            return self.num_heads
        return self.kv_heads

    def attention_grid(self, block: int) -> tuple[int, int]:
        """The (rows, columns) of patches that attend to each other in block `block`: the patch
        grid, or in SAM's windowed blocks a window of window_size x window_size."""
        if self.window_size and block not in self.global_blocks:
            return (self.window_size, self.window_size)
        return self.grid_shape

    @property
    def feature_dim(self) -> int:
        """The width of the final tokens, which the head reads: D, or the channels of SAM's neck."""
        return self.neck_channels or self.embed_dim

    @property
    def mlp_hidden(self) -> int:
        """The MLP's hidden width: 4D in the original (a gated MLP has two such layers side by side)."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_positions(self) -> int:
        """Rows of the position embedding: every token (the original), or only the patches."""
        return self.num_patches + (self.num_prefix_tokens if self.positions_cover_prefix else 0)

    @property
    def forward_macs(self) -> float:
        """Multiply-accumulates of one image's forward pass (17.6 G for ViT-B/16 at 224): per
        block, qkv + output projection (4 D^2 per token), the MLP (2 r D^2 per token) and
        attention's q k^T and weights @ v (2 T^2 D), plus the patch projection (heads: < 2%).
        A gated MLP has three D x hidden matrices instead of two."""
        d, t = self.embed_dim, self.num_tokens
        mlp_matrices = 3 if self.gated_mlp else 2
        per_block = 4 * d * d * t + mlp_matrices * self.mlp_hidden * d * t + 2 * t * t * d
        return self.depth * self.branches * per_block + self.num_patches * d * self.in_channels * self.patch_size**2


    def to_dict(self) -> dict:
        """Every architecture field as plain types (lists for tuples), as a checkpoint records it so
        that the model is rebuilt as it was trained, whatever the family table says later. The
        training-only drop_path_rate is left out (the identity at evaluation)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "drop_path_rate"}
        return {name: list(value) if isinstance(value, tuple) else value for name, value in fields.items()}

    @classmethod
    def from_dict(cls, fields: dict) -> "ViTConfig":
        """The config `to_dict` wrote. A field added since gets its default; a field this version
        does not know is a ValueError (one line): the file was written by a newer version."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s) {', '.join(unknown)}: written by a newer version of "
                             "this project?")
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()})


# ---------------------------------------------------------------------------------------------
# The original ViT, in the order the data flows. vit/paper.py is this path alone; here each piece
# has a slot where a family plugs in its own class (the variants below the model).
# ---------------------------------------------------------------------------------------------


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


def attention_logits(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """q k^T / sqrt(head_dim) + bias, written out: (B, H, T, T). The fused kernel below computes
    it inside; what writes the weights out (explain, MatmulAttention, talking heads) starts here."""
    logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return logits if bias is None else logits + bias


class SoftmaxAttention(nn.Module):
    """The heads' core, softmax(q k^T * scale + bias) v with scale = 1 / sqrt(head_dim), by
    PyTorch's fused kernel (flash attention on a GPU), which never materialises the (T, T)
    weights. Its own module so that vit.explain can hook it and write the weights out from the
    same q, k and bias (`weights`). bias: None, or a (1, H, T, T) tensor added to the logits."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=q.shape[-1] ** -0.5)  # (B, H, T, hd)

    def weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The attention weights the forward applies, written out in float32: (B, H, T, T), rows summing to 1."""
        return attention_logits(q.float(), k.float(), None if bias is None else bias.float()).softmax(dim=-1)


class MatmulAttention(SoftmaxAttention):
    """SoftmaxAttention's formula written out as two matmuls and a softmax, for tools that work
    on matmuls: PT2E quantisation makes both of them int8 (infer/compiled.py swaps this in
    while it exports, vit.export.with_matmul_attention)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return attention_logits(q, k, bias).softmax(dim=-1) @ v  # (B, H, T, T) @ (B, H, T, hd)


class Rotation:
    """What a block's attention applies to q and to k, (B, H, T, hd) -> (B, H, T, hd). In the
    original ViT the identity: positions were added to the tokens before the blocks. A rotary
    scheme (RoPE, below the model) hands each block a subclass carrying its angles' cos and sin."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


IDENTITY = Rotation()


class NoRelativeBias(nn.Module):
    """The original ViT adds nothing to the attention logits (BEiT: RelativePositionBias, below)."""

    def forward(self, dtype: torch.dtype) -> None:
        return None


class MultiHeadSelfAttention(nn.Module):
    """Every token attends to every token, in `num_heads` independent subspaces:

        q, k, v = x W_qkv (+ b), split into heads                         (B, H, T, head_dim) each
        out     = softmax(rotation(q) rotation(k)^T / sqrt(head_dim) + relative_bias) v
        result  = heads side by side (B, T, D), times W_out

    In the original ViT the rotation is the identity and there is no bias: positions were added
    to the tokens before the blocks. The position schemes that enter attention instead plug in
    here, one slot each: RoPE hands every block a `rotation` (RotaryPositions, below), BEiT's
    RelativePositionBias sits in `relative_bias` (elsewhere NoRelativeBias, which adds nothing). Other attentions are
    subclasses that change one step: QVBiasAttention (`qkv_projection`), GroupedQueryAttention
    (`heads`), DifferentialSelfAttention (`heads` and `weighted_values`)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.kv_heads = cfg.kv_heads_in(index)  # num_heads, but in grouped-query blocks (Sapiens2)
        kv_dim = self.kv_heads * cfg.head_dim
        self.split = [cfg.embed_dim, kv_dim, kv_dim]  # q, k, v: rows of the qkv projection
        # One matmul makes q, k and v for every head at once; its output is laid out
        # (qkv, head, head_dim) along the last axis, as in timm's weights.
        self.qkv = nn.Linear(cfg.embed_dim, sum(self.split), bias=cfg.qkv_bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()  # ViT-22B, Sapiens2
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.relative_bias = make_relative_bias(cfg)  # BEiT's table, relpos' MLP; NoRelativeBias in the original
        self.softmax_attention = SoftmaxAttention()
        self.inner_norm = make_norm(cfg, cfg.embed_dim) if cfg.attention_inner_norm else nn.Identity()  # EVA-02 CLIP
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.proj_bias)

    def forward(self, x: torch.Tensor, rotation: Rotation = IDENTITY) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        q, k, v = self.heads(self.qkv_projection(x))  # (B, H, T, hd) each
        q, k = rotation(self.q_norm(q)), rotation(self.k_norm(k))  # RoPE turns them; elsewhere the identity
        out = self.weighted_values(q, k, v)  # (B, H, T, hd)
        return self.out_proj(self.inner_norm(rearrange(out, "b h t hd -> b t (h hd)")))  # heads side by side

    def qkv_projection(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)  # (B, T, D + 2 kv_dim)

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, 3D) -> q, k, v, each (B, H, T, head_dim)."""
        return rearrange(qkv, "b t (qkv h hd) -> qkv b h t hd", qkv=3, h=self.num_heads)

    def weighted_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(hd) + bias) v: (B, H, T, hd)."""
        return self.softmax_attention(q, k, v, self.relative_bias(q.dtype))  # bias: (1, H, T, T), or None

    def attention_map(self, recorded: list[torch.Tensor]) -> torch.Tensor:
        """The attention weights of one forward, from what `softmax_attention` recorded (vit.explain)."""
        return recorded[0]


class MLP(nn.Module):
    """Per-token feed-forward network: D -> 4D -> D, exact (erf) GELU between in the original."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", in_bias: bool = True, out_bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=in_bias)
        self.fc2 = nn.Linear(hidden, dim, bias=out_bias)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, hidden) -> (B, T, D)
        return self.fc2(self.activation(self.fc1(x)))


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


class EncoderBlock(nn.Module):
    """Pre-norm Transformer block: normalise, transform, add back (the residual stream).

        x = x + attention(norm(x))      tokens exchange information
        x = x + mlp(norm(x))            each token is transformed on its own

    (times a layer scale, and with drop path in training, where the model has them)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__()
        # Stochastic depth's rate rises linearly over the blocks: 0 at the first, drop_path_rate at the last.
        rate = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu")[index].item()  # as timm computes it
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
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


class VisionTransformer(nn.Module):
    """ViT classifier. `forward_features` gives the normed tokens, `forward` the logits."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.patch_embedding = make_patch_embedding(cfg)
        self.norm_after_patches = make_norm(cfg, dim) if cfg.norm_after_patches else nn.Identity()  # AIMv2
        # The CLS token carries no image content; through attention it gathers a summary of
        # the patches, and the classifier reads only it.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.class_token else None
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.distillation_token else None
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.register_tokens, dim)) if cfg.register_tokens else None
        # The tokens before the patches in the blocks, in order (CaiT's CLS token joins after them).
        in_blocks = ("distillation_token", "register_tokens") if cfg.class_attention_blocks else (
            "cls_token", "distillation_token", "register_tokens")
        self.prefix_names = [name for name in in_blocks if getattr(self, name) is not None]
        # Attention is blind to order, so each position (CLS + every patch) gets a learned vector,
        # added to the tokens (`add_positions`); or positions enter attention instead (`rope`).
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_positions, dim)) if cfg.absolute_positions else None
        self.add_positions = make_add_positions(cfg)
        self.rope = make_rope(cfg)
        self.norm_before_blocks = make_norm(cfg, dim) if cfg.norm_before_blocks else nn.Identity()  # CLIP
        self.blocks = nn.ModuleList(make_block(cfg, index) for index in range(cfg.depth))
        # timm's srelpos: one relative position MLP, held here, whose bias every block's attention reads
        self.shared_relative_bias = RelativePositionMlp(cfg) if cfg.relative_position_shared else None
        if self.shared_relative_bias is not None:
            for attention in (attention for block in self.blocks for attention in block.attentions):
                attention.relative_bias = SharedRelativeBias(self.shared_relative_bias)
        self.class_attention = ClassAttentionStage(cfg) if cfg.class_attention_blocks else NoClassAttention()  # CaiT
        self.final_norm = make_final_norm(cfg)
        self.attention_pool = AttentionPooling(cfg) if cfg.pool == "map" else None
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.head_distillation = None  # DeiT distilled: the distillation token's own classifier
        if cfg.distillation_token:
            self.head_distillation = nn.Linear(dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        # On the meta device (counting parameters, planning memory) there are no values to draw;
        # skipping them also spares the first meta normal_ importing torch._dynamo (1.4 s).
        if not next(self.parameters()).is_meta:
            self.reset_parameters()
        # Activation checkpointing (train --grad-checkpointing): in training, each block keeps only
        # its input for backward and recomputes the rest there. Memory per block falls from all
        # its intermediate tensors to one (B, T, D) tensor, for about a third more compute.
        self.grad_checkpointing = False
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
            elif isinstance(module, RelativePositionBias):
                nn.init.trunc_normal_(module.table, std=0.02)
            elif isinstance(module, MixedRope):
                module.reset_parameters()
            elif isinstance(module, DifferentialLambda):  # timm's: lambdas ~ N(0, 0.1)
                for lam in (module.lambda_q1, module.lambda_k1, module.lambda_q2, module.lambda_k2):
                    nn.init.normal_(lam, std=0.1)
        if self.position_embedding is not None:
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
                if head.bias is not None:
                    nn.init.zeros_(head.bias)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> input tokens (B, prefix+N, D): CLS first, plus positions."""
        return self.embed_patches(self.patch_embedding(images))

    def embed_patches(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, D) -> input tokens (B, prefix+N, D): the prefix tokens put in front,
        positions added."""
        patch_tokens = self.norm_after_patches(patch_tokens)  # identity but in AIMv2
        prefix = [getattr(self, name).expand(patch_tokens.shape[0], -1, -1) for name in self.prefix_names]  # (B, 1, D) each
        return self.add_positions(prefix, patch_tokens, self.position_embedding)  # (B, prefix+N, D)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final token sequence (B, prefix+N, D), as timm's."""
        return self.encode(self.embed(images), self.cfg.grid_for(*images.shape[-2:]))

    def encode(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Input tokens (B, T, D) of a (rows, columns) patch grid -> the final tokens (B, T, D)."""
        x = self.norm_before_blocks(x)  # identity but in CLIP and PE
        for block, rotation in zip(self.blocks, self.rope.rotations(grid)):  # RoPE's, computed once; else identities
            x = self.run_block(block, x, rotation)
        return self.final_tokens(x)

    def final_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's tokens -> the final tokens: CaiT's CLS token joins here, then the norm."""
        return self.norm_tokens(self.class_attention(x, self.cls_token))

    def norm_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm on every token (B, T, D), where the model normalises tokens; with
        norm_after_pool (GAP ViTs with registers, BEiT, EVA) the head normalises the pooled vector
        instead, and the tokens stay as the last block left them (timm's `norm` is Identity there)."""
        if self.cfg.norm_after_pool:
            return x
        return self.final_norm(x)

    def run_block(self, block: nn.Module, x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
        """One block, (B, T, D) -> (B, T, D); with activation checkpointing in training, its
        backward re-runs it (the random state replayed: drop path drops the same samples)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, rotation, use_reentrant=False)
        return block(x, rotation)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Token sequence (B, T, D) -> logits (B, num_classes): pool one vector, classify it."""
        if self.cfg.pool == "token":
            pooled = features[:, 0]  # the CLS token: (B, D)
        elif self.cfg.pool == "avg":
            pooled = features[:, self.cfg.num_prefix_tokens:].mean(dim=1)  # the mean of the patch tokens
        else:
            pooled = self.attention_pool(features)  # a learned query attends over the tokens (SigLIP, PE)
        if self.cfg.norm_after_pool:
            pooled = self.final_norm(pooled)
        if self.head_distillation is not None:  # DeiT: both tokens' votes, averaged (as timm infers)
            return (self.head(pooled) + self.head_distillation(features[:, 1])) / 2
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    # Every block's tokens, for detection and segmentation heads: timm's API and DINOv2's, in
    # vit/features.py (not the classification path, which the methods above are).
    forward_intermediates = features.forward_intermediates
    get_intermediate_layers = features.get_intermediate_layers
    # NaFlex's own input, images of different sizes packed as patches, coordinates and a mask (vit/naflex.py).
    forward_naflex = naflex.forward_naflex


# ---------------------------------------------------------------------------------------------
# The variants. Each is a class of its own, picked once when the model is built (the make_*
# functions at the end); the forward methods above never ask which family they run.
# ---------------------------------------------------------------------------------------------


def make_norm(cfg: ViTConfig, dim: int, eps: float | None = None) -> nn.Module:
    """LayerNorm (the original: (x - mean) / std * w + b) or RMSNorm (AIMv2: x / rms(x) * w); eps:
    the config's unless given."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps or cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=eps or cfg.layer_norm_eps)


class NaFlexPatchEmbedding(nn.Module):
    """NaFlex (SigLIP 2, Tschannen et al. 2025; timm's NaFlexVit, RADIO): each patch's pixels, in
    (row, column, channel) order, through one Linear, plus a learned position table that this
    module keeps at its own grid (16 x 16) and resizes to the input's patch grid at every forward
    pass, so one model reads any size and aspect:

        token[i, j] = W pixels(i, j) + b + resize(table, (rows, columns))[i, j]       (B, N, D)

    With position_keeps_aspect (RADIO, par_gap) the table is resized to a square of the longer
    side and its top-left corner taken: a patch's position does not stretch with the aspect.
    `from_patches` takes the pixels already cut out (NaFlex's own input, vit/naflex.py)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size, self.keeps_aspect, self.resize = cfg.patch_size, cfg.position_keeps_aspect, cfg.position_resize
        self.projection = nn.Linear(cfg.in_channels * cfg.patch_size**2, cfg.embed_dim, bias=cfg.patch_bias)
        self.make_table(cfg)

    def make_table(self, cfg: ViTConfig) -> None:
        side = cfg.position_grid
        self.position_embedding = nn.Parameter(torch.zeros(1, side, side, cfg.embed_dim))  # (1, G, G, D), a map

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, D)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return self.from_patches(naflex.patchify(images, self.patch_size), grid)  # (B, N, P*P*C) pixels

    def from_patches(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, rows*columns, P*P*C) pixels, rows first -> (B, N, D) tokens with their positions."""
        tokens = self.projection(pixels)
        return tokens + self.positions(grid).to(tokens.dtype)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table for a (rows, columns) grid: (1, rows*columns, D)."""
        rows, columns = grid
        table = rearrange(self.position_embedding, "1 gh gw d -> 1 d gh gw")
        if tuple(table.shape[-2:]) != (rows, columns):
            size = (max(grid), max(grid)) if self.keeps_aspect else grid
            table = resize_grid(table.float(), size, self.resize)[:, :, :rows, :columns]
        return rearrange(table, "1 d r c -> 1 (r c) d")


class FactorizedNaFlexPatchEmbedding(NaFlexPatchEmbedding):
    """NaFlex with a table per axis (timm's parfac): a learned vector per row and one per column,
    each stretched linearly to the grid, and summed: position[i, j] = rows[i] + columns[j]."""

    def make_table(self, cfg: ViTConfig) -> None:
        self.position_rows = nn.Parameter(torch.zeros(1, cfg.position_grid, cfg.embed_dim))  # (1, G, D)
        self.position_columns = nn.Parameter(torch.zeros(1, cfg.position_grid, cfg.embed_dim))

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        lengths = (max(grid), max(grid)) if self.keeps_aspect else grid
        rows, columns = (self.stretched(table, length)[:, :side]
                         for table, length, side in zip((self.position_rows, self.position_columns), lengths, grid))
        return rearrange(rows[:, :, None] + columns[:, None], "1 r c d -> 1 (r c) d")  # (1, N, D)

    @staticmethod
    def stretched(table: torch.Tensor, length: int) -> torch.Tensor:  # (1, G, D) -> (1, length, D)
        if table.shape[1] == length:
            return table
        return F.interpolate(table.float().transpose(1, 2), size=length, mode="linear").transpose(1, 2)


class HybridPatchEmbedding(nn.Module):
    """The ViT paper's hybrids (its section 3.1): a CNN stem's feature map instead of the raw
    image, each P x P patch of the map projected to a token (P = 1 in the paper's R50+ViT-B/16:
    every position of ResNet-50's stride-16 map is a token). vit/stems.py has the stems; MobileCLIP's
    is D wide already, and has no projection.

        image (B, 3, H, W) -> stem (B, C, H/s, W/s) -> projection (B, D, H/sP, W/sP) -> (B, N, D)"""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.stem = make_stem(cfg.stem, cfg.stem_depths, cfg.embed_dim)
        channels = stem_channels(cfg.stem, cfg.stem_depths, cfg.embed_dim)
        self.projection = nn.Identity() if cfg.stem == "mobileclip" else nn.Conv2d(
            channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(self.projection(self.stem(images)), "b d gh gw -> b (gh gw) d")


# --- Where the learned position table goes (VisionTransformer.add_positions). It is the model's
# parameter `position_embedding`, handed in; these modules hold no weights of their own.

class AddPositions(nn.Module):
    """The original: a position vector for every token, the CLS token included."""

    def forward(self, prefix: list[torch.Tensor], patches: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return torch.cat([*prefix, patches], dim=1) + table  # (B, prefix+N, D)


class AddPositionsToPatches(nn.Module):
    """DeiT-III, registers, FlexiViT: the table covers the patches only; prefix tokens get none."""

    def forward(self, prefix: list[torch.Tensor], patches: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return torch.cat([*prefix, patches + table], dim=1)


class NoPositionTable(nn.Module):
    """BEiT, DINOv3, most RoPE models: no table; positions enter attention instead."""

    def forward(self, prefix: list[torch.Tensor], patches: torch.Tensor, table: None) -> torch.Tensor:
        return torch.cat([*prefix, patches], dim=1)


# --- Positions inside attention: a rotation of q and k per block (RoPE), or a bias on the logits.



class PairRotation(Rotation):
    """Rotate every channel pair (a, b) of each patch token by its angle:

        (a, b) -> (a cos angle - b sin angle, a sin angle + b cos angle)

    Pairs are neighbouring channels (2j, 2j + 1); prefix tokens (CLS, registers) are not rotated.
    cos, sin: (N, hd/2), or (H, N, hd/2) where each head has its own angles (mixed RoPE)."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, prefix: int):
        self.cos, self.sin, self.prefix = cos, sin, prefix

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, :, self.prefix:].float()  # (B, H, N, hd)
        a, b = self.pairs(patches)
        rotated = self.join(a * self.cos - b * self.sin, a * self.sin + b * self.cos)
        return torch.cat([x[:, :, :self.prefix], rotated.to(x.dtype)], dim=2)

    def pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., 0::2], x[..., 1::2]

    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([a, b], dim=-1).flatten(-2)


class HalfRotation(PairRotation):
    """DINOv3's pairing: pair j is channels (j, j + hd/2), the two halves of the head."""

    def pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.chunk(2, dim=-1)

    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=-1)


class NoRope(nn.Module):
    """Positions are not rotary: every block's rotation is the identity."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.depth = cfg.depth

    def rotations(self, grid: tuple[int, int]) -> list[Rotation]:
        return [IDENTITY] * self.depth


class RotaryPositions(nn.Module):
    """2D rotary position embedding (RoPE; Su et al. 2021, "RoFormer"), as EVA-02, DINOv3, PE and
    RoPE-ViT use it. Instead of adding a position vector to each token, q and k of each patch are
    rotated: channels are taken in pairs (a, b), and pair j of the patch at (x, y) is turned by
    angle_j = position_j * frequency_j (PairRotation). A rotation by angle_i on the query and
    angle_j on the key leaves q . k depending only on angle_i - angle_j: the logits see where
    patches are relative to each other. In 2D the head_dim / 2 pairs are split in two: the first
    half of the frequencies follows one axis, the second half the other (y then x in EVA-02 and
    DINOv3, x then y in PE and RoPE-ViT: `rope_xy`). The subclasses differ in positions and
    frequencies: AxialRope, DinoV3Rope, MixedRope."""

    rotation_class = PairRotation

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg

    def rotations(self, grid: tuple[int, int]) -> list[Rotation]:
        """One rotation per block for a (rows, columns) patch grid, computed once per forward."""
        angles = self.angles(grid)  # (N, head_dim / 2)
        return [self.rotation_class(angles.cos(), angles.sin(), self.cfg.num_prefix_tokens)] * self.cfg.depth

    def grid_angles(self, grid: tuple[int, int], ladder: torch.Tensor) -> torch.Tensor:
        """Every patch's angles (N, head_dim / 2) for a frequency `ladder` (n,) per axis: the first
        axis's n angles, then the second's; patches in row-major order, as the tokens."""
        y, x = torch.meshgrid(self.coordinates(grid[0], ladder.device), self.coordinates(grid[1], ladder.device),
                              indexing="ij")  # (rows, columns) each
        first, second = (x, y) if self.cfg.rope_xy else (y, x)
        position = torch.stack([first.flatten(), second.flatten()], dim=-1)[:, :, None]  # (N, 2, 1)
        return (position * ladder).flatten(1)  # (N, 2n)


class AxialRope(RotaryPositions):
    """EVA-02, PE, RoPE-ViT: position = patch index (+ rope_offset, rescaled so that the grid spans
    rope_reference_grid when set), frequency_i = temperature^(-i / n), i < n = head_dim / 4."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        n = cfg.head_dim // 4  # frequencies per axis
        self.register_buffer("frequency", cfg.rope_temperature ** -(torch.arange(n).float() / n), persistent=False)

    def coordinates(self, side: int, device: torch.device) -> torch.Tensor:
        coords = torch.arange(side, device=device).float() + self.cfg.rope_offset  # (side,) patch indices
        if self.cfg.rope_reference_grid:  # EVA: the grid spans the pretraining grid, whatever its size
            coords = coords / side * self.cfg.rope_reference_grid
        return coords

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.grid_angles(grid, self.frequency)


class DinoV3Rope(RotaryPositions):
    """DINOv3: position = patch centre in [-1, 1] (any grid spans the same range), frequency_i =
    2 pi / temperature^(4 i / head_dim); pairs are channels (j, j + head_dim / 2)."""

    rotation_class = HalfRotation

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        n = cfg.head_dim // 4
        self.register_buffer("frequency", 2 * math.pi / cfg.rope_temperature ** (2 * torch.arange(n).float() /
                                                                                 (cfg.head_dim // 2)), persistent=False)

    def coordinates(self, side: int, device: torch.device) -> torch.Tensor:
        return 2.0 * ((torch.arange(0.5, side, device=device).float() + self.cfg.rope_offset) / side) - 1.0  # centres

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.grid_angles(grid, self.frequency)


class MixedRope(RotaryPositions):
    """RoPE-ViT mixed (Heo et al. 2024): angle = x * fx + y * fy with learned fx, fy per block,
    head and pair, so a pair can follow any direction, not just x or y."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.freqs = nn.Parameter(torch.zeros(2, cfg.depth, cfg.num_heads, cfg.head_dim // 2))  # (2 axes, depth, H, hd/2)

    def reset_parameters(self) -> None:
        """Mixed RoPE starts (as in its paper) from the axial ladder turned by a random angle per
        block and head: fx = m cos(theta), then m cos(theta + pi/2); fy likewise with sines."""
        cfg = self.cfg
        magnitude = cfg.rope_temperature ** -(torch.arange(0, cfg.head_dim, 4).float() / cfg.head_dim)  # (n,)
        theta = torch.rand(cfg.depth, cfg.num_heads, 1) * 2 * math.pi
        fx = torch.cat([magnitude * torch.cos(theta), magnitude * torch.cos(theta + math.pi / 2)], dim=-1)
        fy = torch.cat([magnitude * torch.sin(theta), magnitude * torch.sin(theta + math.pi / 2)], dim=-1)
        with torch.no_grad():
            self.freqs.copy_(torch.stack([fx, fy]))  # (2, depth, heads, head_dim / 2)

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        """(depth, H, N, head_dim / 2): every block and head its own angles."""
        rows, columns = grid
        device = self.freqs.device
        y, x = torch.meshgrid(torch.arange(rows, device=device).float(), torch.arange(columns, device=device).float(),
                              indexing="ij")
        x, y = x.flatten(), y.flatten()  # (N,) each, patch indices
        fx, fy = self.freqs.float()  # (depth, H, hd/2) each
        return x[:, None] * fx[..., None, :] + y[:, None] * fy[..., None, :]

    def rotations(self, grid: tuple[int, int]) -> list[Rotation]:
        angles = self.angles(grid)
        prefix = self.cfg.num_prefix_tokens
        return [PairRotation(block.cos(), block.sin(), prefix) for block in angles]


class RelativePositionBias(nn.Module):
    """BEiT's relative position bias (Bao et al. 2021, after Swin): a learned number per head for
    every offset (dy, dx) between two patches, added to the attention logits:

        logits[h, i, j] += table[index[i, j], h],   index[i, j] = (dy + G-1) * (2G-1) + (dx + G-1)

    (2G-1)^2 offsets, plus three entries for the CLS token: CLS -> patch, patch -> CLS, CLS -> CLS."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        g = cfg.grid_size
        offsets = (2 * g - 1) ** 2
        self.table = nn.Parameter(torch.zeros(offsets + 3, cfg.num_heads))  # (offsets + 3, H)
        y, x = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        y, x = y.flatten(), x.flatten()  # (N,) each, row-major as the tokens
        dy, dx = y[:, None] - y[None, :] + g - 1, x[:, None] - x[None, :] + g - 1  # (N, N), from 0
        index = torch.empty(1 + g * g, 1 + g * g, dtype=torch.long)  # the CLS token first
        index[1:, 1:] = dy * (2 * g - 1) + dx
        index[0, :], index[:, 0], index[0, 0] = offsets, offsets + 1, offsets + 2  # CLS->, ->CLS, CLS->CLS
        self.register_buffer("index", index, persistent=False)

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        return rearrange(self.table[self.index], "i j h -> 1 h i j").to(dtype)  # (1, H, T, T)


class OffsetMlp(nn.Module):
    """(dy, dx), log-spaced -> a bias per head: Linear(2, hidden), ReLU, Linear(hidden, heads)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, heads)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:  # (..., 2) -> (..., heads)
        return self.fc2(F.relu(self.fc1(offsets)))


class RelativePositionMlp(nn.Module):
    """timm's relpos ViTs (after Swin v2's continuous position bias, timm's "cr" mode): the bias
    for two patches comes from an MLP of their offset, log-spaced so that near offsets are told
    apart finely and far ones coarsely:

        logits[h, i, j] += mlp(sign(d) * ln(1 + |d|))[h],   d = (dy, dx) from patch j to patch i

    The MLP has no table of offsets to resize: any grid gets its biases from the same weights.
    Prefix tokens (a CLS token) get no bias (a zero row and column)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        rows, columns = cfg.grid_shape
        self.prefix, self.num_heads = cfg.num_prefix_tokens, cfg.num_heads
        self.mlp = OffsetMlp(cfg.relative_position_mlp, cfg.num_heads)
        dy, dx = torch.meshgrid(torch.arange(-(rows - 1), rows).float(), torch.arange(-(columns - 1), columns).float(),
                                indexing="ij")  # every offset: (2R-1, 2C-1) each
        offsets = torch.stack([dy, dx], dim=-1)
        self.register_buffer("log_offsets", offsets.sign() * torch.log1p(offsets.abs()), persistent=False)  # (2R-1, 2C-1, 2)
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
        y, x = y.flatten(), x.flatten()  # (N,) each, row-major as the tokens
        index = (y[:, None] - y[None, :] + rows - 1) * (2 * columns - 1) + (x[:, None] - x[None, :] + columns - 1)
        self.register_buffer("index", index, persistent=False)  # (N, N): patch pair -> its offset's row

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        per_offset = self.mlp(self.log_offsets).reshape(-1, self.num_heads)  # ((2R-1)(2C-1), H)
        bias = rearrange(per_offset[self.index], "i j h -> h i j")  # (H, N, N)
        return F.pad(bias, (self.prefix, 0, self.prefix, 0))[None].to(dtype)  # (1, H, T, T)


class SharedRelativeBias(nn.Module):
    """timm's srelpos ViTs: every block adds the same bias, from one RelativePositionMlp that the
    model holds (`shared_relative_bias`). This slot only reads it: the MLP is not registered
    here, so its weights are the model's, stored once."""

    def __init__(self, shared: RelativePositionMlp):
        super().__init__()
        self.shared = (shared,)  # a tuple: not a submodule of this block

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        return self.shared[0](dtype)  # (1, H, T, T)


# --- Other attentions: each changes one step of MultiHeadSelfAttention.

class QVBiasAttention(MultiHeadSelfAttention):
    """BEiT, EVA, DINOv3: biases for q and v only; k's is a constant zero (q . b_k would shift a
    query's logits equally, so softmax ignores it; with RoPE it would not, so it is left out)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.qkv = nn.Linear(cfg.embed_dim, sum(self.split), bias=False)
        self.q_bias = nn.Parameter(torch.zeros(cfg.embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(cfg.embed_dim))

    def qkv_projection(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x) + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])  # (B, T, 3D)


class GroupedQueryAttention(MultiHeadSelfAttention):
    """Grouped-query attention (Sapiens2's middle blocks): kv_heads key/value heads, each shared by
    num_heads / kv_heads query heads, so k and v are that many times narrower."""

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = qkv.split(self.split, dim=-1)  # (B, T, D), (B, T, kv_dim) twice
        q = rearrange(q, "b t (h hd) -> b h t hd", h=self.num_heads)  # (B, H, T, hd)
        k, v = (rearrange(t, "b t (h hd) -> b h t hd", h=self.kv_heads) for t in (k, v))  # (B, kv_heads, T, hd)
        group = self.num_heads // self.kv_heads  # query head h reads key/value head h // group
        return q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, H, T, hd) each


class DifferentialLambda(nn.Module):
    """Differential attention's learned weight and output norm (see DifferentialSelfAttention):

        lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init"""

    def __init__(self, cfg: ViTConfig, index: int):
        super().__init__()
        half = cfg.head_dim // 2  # the width of q1, k1, q2, k2 in each head
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.zeros(half)) for _ in range(4))
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * index)
        self.norm = nn.RMSNorm(cfg.head_dim, eps=1e-5)  # on each head's output (B, H, T, head_dim)

    def weight(self) -> torch.Tensor:
        """lambda, a scalar."""
        first = torch.exp((self.lambda_q1 * self.lambda_k1).sum().float())
        second = torch.exp((self.lambda_q2 * self.lambda_k2).sum().float())
        return first - second + self.lambda_init

    def forward(self, difference: torch.Tensor) -> torch.Tensor:
        """A @ v, the heads' outputs (B, H, T, head_dim) -> normed and scaled by 1 - lambda_init."""
        return self.norm(difference) * (1 - self.lambda_init)


class DifferentialSelfAttention(MultiHeadSelfAttention):
    """Differential attention (Ye et al. 2024, "Differential Transformer"; timm's dwee, dlittle,
    dpwee). Each head's q and k are split in two halves, which give two softmax maps; the
    attention is their difference, the second weighted by a learned lambda (DifferentialLambda):

        A = softmax(q1 k1^T / sqrt(d)) - lambda * softmax(q2 k2^T / sqrt(d))     (B, heads, T, T)

    Attention that both maps give (to patches that do not matter) cancels. The heads' outputs
    A @ v are RMS-normed and scaled by 1 - lambda_init, where lambda_init = 0.8 - 0.6 exp(-0.3 i)
    grows with the block's index i."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.q_norm = make_norm(cfg, cfg.head_dim // 2) if cfg.qk_norm else nn.Identity()  # on the half-width q, k
        self.k_norm = make_norm(cfg, cfg.head_dim // 2) if cfg.qk_norm else nn.Identity()
        self.differential = DifferentialLambda(cfg, index)

    def heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k: (B, 2H, T, hd/2), two half-width heads per head; v: (B, H, T, hd)."""
        q, k, v = rearrange(qkv, "b t (qkv d) -> qkv b t d", qkv=3)
        q, k = (rearrange(t, "b t (h hd) -> b h t hd", h=2 * self.num_heads) for t in (q, k))
        return q, k, rearrange(v, "b t (h hd) -> b h t hd", h=self.num_heads)

    def weighted_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # heads 0, 2, 4, ... of q and k make each head's first map, 1, 3, 5, ... its second
        first = self.softmax_attention(q[:, 0::2], k[:, 0::2], v, None)  # (B, H, T, hd)
        second = self.softmax_attention(q[:, 1::2], k[:, 1::2], v, None)
        lam = self.differential.weight()  # A = first map - lambda * second map, so A @ v likewise
        return self.differential(first - lam.to(first.dtype) * second)

    def attention_map(self, recorded: list[torch.Tensor]) -> torch.Tensor:
        first, second = recorded
        return first - self.differential.weight() * second


class TalkingHeadsSoftmax(SoftmaxAttention):
    """Talking heads (Shazeer et al. 2020; CaiT): the heads exchange information around the
    softmax. Each (i, j) logit vector across the H heads is mixed by a learned H x H matrix before
    the softmax, and each weight vector by another after it:

        logits = mix_logits(q k^T / sqrt(hd))        over the heads axis     (B, H, T, T)
        A      = mix_weights(softmax(logits))                                 (B, H, T, T)
        out    = A v                                                          (B, H, T, hd)

    The weights are written out (no fused kernel: the mixing sits between its steps)."""

    def __init__(self, heads: int):
        super().__init__()
        self.mix_logits = nn.Linear(heads, heads)
        self.mix_weights = nn.Linear(heads, heads)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.mixed(q, k, bias) @ v  # (B, H, T, hd)

    def mixed(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        logits = attention_logits(q, k, bias)  # (B, H, T, T)
        logits = rearrange(self.mix_logits(rearrange(logits, "b h i j -> b i j h")), "b i j h -> b h i j")
        weights = rearrange(logits.softmax(dim=-1), "b h i j -> b i j h")
        return rearrange(self.mix_weights(weights), "b i j h -> b h i j")  # rows no longer sum to 1

    def weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.mixed(q, k, bias).float()


class TalkingHeadsAttention(MultiHeadSelfAttention):
    """CaiT's attention: the original's, with TalkingHeadsSoftmax as its core."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.softmax_attention = TalkingHeadsSoftmax(cfg.num_heads)


# --- Other MLPs and blocks

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
        rate = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu")[index].item()
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
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


# --- CaiT's class attention (VisionTransformer.class_attention)

class NoClassAttention(nn.Module):
    """The original: the CLS token went through the blocks with the patches; nothing joins after."""

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None) -> torch.Tensor:
        return x


class ClassAttention(nn.Module):
    """CaiT's class attention: only the CLS token asks; it reads itself and every patch:

        q    = cls W_q                                       (B, H, 1, hd)
        k, v = [cls; patches] W_k, [cls; patches] W_v        (B, H, 1+N, hd)
        cls' = softmax(q k^T / sqrt(hd)) v, heads side by side, times W_out    (B, 1, D)

    The patch tokens are read, never updated: the blocks before settled them."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.k = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.v = nn.Linear(cfg.embed_dim, cfg.embed_dim, bias=cfg.qkv_bias)
        self.softmax_attention = SoftmaxAttention()
        self.out_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 1+N, D), the CLS token first -> (B, 1, D)
        q = rearrange(self.q(tokens[:, :1]), "b 1 (h hd) -> b h 1 hd", h=self.num_heads)
        k, v = (rearrange(projection(tokens), "b t (h hd) -> b h t hd", h=self.num_heads) for projection in (self.k, self.v))
        cls = self.softmax_attention(q, k, v, None)  # (B, H, 1, hd)
        return self.out_proj(rearrange(cls, "b h 1 hd -> b 1 (h hd)"))


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


# --- SAM's image encoder: windows, decomposed relative positions, the neck

class DecomposedRelativePositions(nn.Module):
    """SAM (after MViTv2, Li et al. 2022): a learned vector per row offset and one per column
    offset, which each query reads into a bias on its logits. For query patch i and key patch j
    of an R x C grid,

        bias[i, j] = q_i . rows[row_i - row_j + R - 1] + q_i . columns[col_i - col_j + C - 1]

    (2R-1) + (2C-1) vectors instead of BEiT's (2R-1)(2C-1) per-head numbers, and the bias depends
    on the query's content, not only on where the patches are."""

    def __init__(self, grid: tuple[int, int], head_dim: int):
        super().__init__()
        rows, columns = grid
        self.grid = grid
        self.rows = nn.Parameter(torch.zeros(2 * rows - 1, head_dim))  # (2R-1, hd)
        self.columns = nn.Parameter(torch.zeros(2 * columns - 1, head_dim))  # (2C-1, hd)
        for name, side in (("row_offsets", rows), ("column_offsets", columns)):
            index = torch.arange(side)
            self.register_buffer(name, index[:, None] - index[None, :] + side - 1, persistent=False)  # (side, side)

    def forward(self, q: torch.Tensor) -> torch.Tensor:  # (B, H, R*C, hd) -> (B, H, R*C, R*C)
        q = rearrange(q, "b h (r c) d -> b h r c d", r=self.grid[0])
        by_row = torch.einsum("bhrcd,rkd->bhrck", q, self.rows[self.row_offsets].to(q.dtype))  # key rows k
        by_column = torch.einsum("bhrcd,ckd->bhrck", q, self.columns[self.column_offsets].to(q.dtype))  # key columns k
        bias = by_row[..., :, None] + by_column[..., None, :]  # (B, H, R, C, key rows, key columns)
        return rearrange(bias, "b h r c kr kc -> b h (r c) (kr kc)")


class RelativePositionsAttention(MultiHeadSelfAttention):
    """SAM's attention: the original's, with the query-dependent bias of DecomposedRelativePositions
    on the logits, for the grid the block attends over (a window, or the whole patch grid)."""

    def __init__(self, cfg: ViTConfig, index: int = 0):
        super().__init__(cfg, index)
        self.relative_positions = DecomposedRelativePositions(cfg.attention_grid(index), cfg.head_dim)

    def weighted_values(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.softmax_attention(q, k, v, self.relative_positions(q))  # (B, H, T, hd)


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


# --- Choosing the classes, once, from the config

def make_add_positions(cfg: ViTConfig) -> nn.Module:
    if not cfg.absolute_positions:
        return NoPositionTable()
    return AddPositions() if cfg.positions_cover_prefix else AddPositionsToPatches()


def make_rope(cfg: ViTConfig) -> nn.Module:
    return {None: NoRope, "axial": AxialRope, "dinov3": DinoV3Rope, "mixed": MixedRope}[cfg.rope](cfg)


def make_relative_bias(cfg: ViTConfig) -> nn.Module:
    if cfg.relative_position_bias:
        return RelativePositionBias(cfg)
    per_block = cfg.relative_position_mlp and not cfg.relative_position_shared  # shared: the model sets it
    return RelativePositionMlp(cfg) if per_block else NoRelativeBias()


def make_patch_embedding(cfg: ViTConfig) -> nn.Module:
    if cfg.naflex:
        return FactorizedNaFlexPatchEmbedding(cfg) if cfg.factorized_positions else NaFlexPatchEmbedding(cfg)
    return HybridPatchEmbedding(cfg) if cfg.stem else PatchEmbedding(cfg)


def make_final_norm(cfg: ViTConfig) -> nn.Module:
    if cfg.neck_channels:
        return Neck(cfg)
    if not cfg.final_norm:
        return nn.Identity()
    return make_norm(cfg, cfg.embed_dim, cfg.final_norm_eps)


def make_attention(cfg: ViTConfig, index: int) -> MultiHeadSelfAttention:
    if cfg.decomposed_relative_positions:
        return RelativePositionsAttention(cfg, index)
    if cfg.talking_heads:
        return TalkingHeadsAttention(cfg, index)
    if cfg.differential:
        return DifferentialSelfAttention(cfg, index)
    if cfg.kv_heads_in(index) < cfg.num_heads:
        return GroupedQueryAttention(cfg, index)
    if cfg.qkv_bias and not cfg.key_bias:
        return QVBiasAttention(cfg, index)
    return MultiHeadSelfAttention(cfg, index)


def make_mlp(cfg: ViTConfig, out_bias: bool = True) -> nn.Module:
    in_bias = cfg.proj_bias or cfg.parallel  # (a parallel block's MLP always has an input bias: timm's in_proj's)
    if cfg.gated_mlp:
        return GatedMLP(cfg, in_bias=in_bias, out_bias=cfg.proj_bias and out_bias)
    return MLP(cfg.embed_dim, cfg.mlp_hidden, cfg.activation, in_bias=in_bias, out_bias=cfg.proj_bias and out_bias)


def make_block(cfg: ViTConfig, index: int) -> nn.Module:
    if cfg.window_size and index not in cfg.global_blocks:
        return WindowedBlock(cfg, index)
    if cfg.parallel:
        return ParallelBlock(cfg, index)
    if cfg.branches > 1:
        return BranchedBlock(cfg, index)
    return PostNormBlock(cfg, index) if cfg.post_norm else EncoderBlock(cfg, index)
