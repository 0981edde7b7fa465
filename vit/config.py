"""What fixes a ViT's shapes and numerics: `ViTConfig`, one frozen dataclass of plain fields.

`ViTConfig()` is the paper's ViT-B/16 at 224 px (vit_base_patch16_224). The fields come in
groups, the paper's first; every other group is off by default and is where one concern of the
families differs (vit/families.py says which family sets which field, vit/layers/ holds the class
each field chooses):

    the paper's ViT      img_size, patch_size, in_channels, num_classes, embed_dim, depth,
                         num_heads, mlp_ratio, layer_norm_eps
    tokens               class_token, distillation_token, register_tokens, ... (embeddings.py)
    positions            absolute_positions, rope*, relative_position*, ...    (positions.py)
    attention            qkv_bias, key_bias, qk_norm, kv_heads, differential, ... (attention.py)
    the MLP and the norm activation, gated_mlp, norm, ...                      (mlp.py, common.py)
    blocks               layer_scale, post_norm, parallel, branches            (blocks.py)
    after the blocks     final_norm, norm_after_pool, pool, ...                (heads.py)
    NaFlex, hybrids, SAM, CaiT   a group each                   (embeddings.py, stems.py, blocks.py)
    training only        drop_path_rate

A checkpoint records the whole config (`to_dict`), so a model is rebuilt as it was trained.
"""

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from weights.load import POSITION_RESIZES


DEFAULT_MEAN = (0.5, 0.5, 0.5)


DEFAULT_STD = (0.5, 0.5, 0.5)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # big_vision's SigLIP models
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI's CLIP
}


POOLS = ("token", "avg", "map")


ROPES = (None, "axial", "dinov3", "mixed")


NORMS = ("layernorm", "rmsnorm")


RESIZES = tuple(POSITION_RESIZES)  # weights/load.py says what each does

STEMS = ("bit", "resnet_d", "mobileclip")  # the hybrids' CNN stems (vit/layers/stems.py builds them)


def stem_stride(kind: str, depths: tuple[int, ...]) -> int:
    """Pixels per position of the stem's map: 4 after a ResNet's stem, halved by each stage after
    the first (16 for (3, 4, 9)); MobileCLIP's 4 x 2 x 2."""
    if kind == "mobileclip":
        return 16
    return 4 * 2 ** max(len(depths) - 1, 0)


# --- Every field's type and range, checked before anything is built from a config (a checkpoint's
# recorded architecture may come from anywhere): (type, lowest, highest), None where unbounded.
# The bounds hold every name of vit/families.py with room to spare; they keep a file from asking
# for a model no machine could hold (100,000 blocks, a 65,536 px side) before it is compared.
INT, NUMBER = "a whole number", "a number"
RULES = {
    "patch_size": (INT, 1, 1024), "in_channels": (INT, 1, 64), "num_classes": (INT, 0, 1_000_000),
    "embed_dim": (INT, 1, 16384), "depth": (INT, 1, 1024), "num_heads": (INT, 1, 1024),
    "mlp_ratio": (NUMBER, 1e-3, 64.0), "layer_norm_eps": (NUMBER, 1e-30, 1e-1), "register_tokens": (INT, 0, 1024),
    "rope_temperature": (NUMBER, 1e-3, 1e9), "rope_offset": (NUMBER, -1e6, 1e6),
    "relative_position_mlp": (INT, 0, 16384), "full_attention_ends": (INT, 0, 1024), "branches": (INT, 1, 64),
    "position_grid": (INT, 1, 1024), "window_size": (INT, 0, 1024), "neck_channels": (INT, 0, 16384),
    "class_attention_blocks": (INT, 0, 64), "drop_path_rate": (NUMBER, 0.0, 1.0),
}
OPTIONAL = {"kv_heads": (INT, 1, 1024), "pool_heads": (INT, 1, 1024), "pool_mlp_ratio": (NUMBER, 1e-3, 64.0),
            "rope_reference_grid": (INT, 1, 1024), "final_norm_eps": (NUMBER, 1e-30, 1e-1)}
MAX_SIDE = 16384  # pixels per image side
MAX_TOKENS = 65536  # tokens per image: attention's cost grows with their square


def field_problem(name: str, value, kind: str, low, high) -> str | None:
    """Why `value` cannot be the field `name`, in a few words; None where it can."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    fits = whole if kind == INT else (whole or isinstance(value, float)) and math.isfinite(value)
    if not fits:
        return f"{name} is {str(value)[:40]!r} ({type(value).__name__}), not {kind}"
    if not low <= value <= high:
        return f"{name} is {value}, outside {low} to {high}"
    return None


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shapes (and numerics) of a ViT. `ViTConfig()` is the paper's
    ViT-B/16 at 224 px (vit_base_patch16_224); vit/families.py gives every other name's fields."""

    # --- The paper's ViT (its Table 1): ViTConfig() is ViT-B/16 at 224 px.
    img_size: int | tuple[int, int] = 224  # a side, or (height, width): Sapiens2 is 1024 x 768
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000  # 0: no classifier, the model returns the pooled features (a backbone)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6  # timm's; CLIP uses 1e-5, Hugging Face's ViT checkpoints 1e-12

    # --- Tokens: which stand before the patches, and norms around the embedding (layers/embeddings.py, model.py).
    class_token: bool = True  # SigLIP, GAP ViTs: no CLS token, the head pools the patch tokens instead
    distillation_token: bool = False  # DeiT distilled: a 2nd token taught by a CNN, with its own head [distilled]
    register_tokens: int = 0  # DINOv2-reg, *_reg4_*: learned scratch tokens attention can park in [reg_tokens]
    patch_bias: bool = True  # CLIP: the patch projection has no bias
    norm_after_patches: bool = False  # AIMv2: a norm on the patch tokens, before the positions [embed_norm_layer]
    norm_before_blocks: bool = False  # CLIP: a LayerNorm on the embedded tokens before block 1 [pre_norm]

    # --- Positions: a learned table, RoPE or a bias on the logits (layers/positions.py).
    absolute_positions: bool = True  # the learned table added to the tokens; False in BEiT, DINOv3, most
    #                                  RoPE models: attention alone sees positions [use_abs_pos_emb]
    positions_cover_prefix: bool = True  # DeiT-III, registers: False = positions for patches only [no_embed_class]
    position_resize: str = "bicubic"  # how the position table is resized for another image size, as the code
    #                                   base of the weights does it (POSITION_RESIZES): bicubic, antialiased
    #                                   (timm's default); "bilinear" (FlexiViT, RADIO, timm's .npz reader);
    #                                   "bicubic_plain" (transformers); "bicubic_offset" (Meta's DINOv2)
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

    # --- Attention (layers/attention.py).
    qkv_bias: bool = True  # timm's medium GAP ViTs: q, k, v without bias
    key_bias: bool = True  # BEiT, EVA, DINOv3: q and v have a bias, k none (with RoPE it would not cancel)
    proj_bias: bool = True  # AIMv2: the attention output and the MLP without bias
    qk_norm: bool = False  # a norm on each head's q and k before the logits, which keeps them bounded (ViT-22B,
    #                        Sapiens2)
    attention_inner_norm: bool = False  # EVA-02 CLIP: a norm on the heads' output before out_proj [scale_attn_inner]
    kv_heads: int | None = None  # grouped-query attention: this many key/value heads, each shared by
    #                              num_heads / kv_heads query heads (Sapiens2's middle blocks) [num_kv_heads]
    full_attention_ends: int = 0  # Sapiens2: the first and the last this many blocks keep all key/value heads
    differential: bool = False  # Differential attention (Ye et al. 2024): two softmax maps per head, the second
    #                             subtracted with a learned weight (see DifferentialSelfAttention) [attn_layer='diff']
    talking_heads: bool = False  # CaiT: the heads' logits, and their weights, mixed across heads (TalkingHeadsSoftmax)

    # --- The MLP and the norm (layers/mlp.py, layers/common.py).
    activation: str = "gelu"  # "quick_gelu": OpenAI's CLIP; "gelu_tanh": some SigLIP [act_layer]
    gated_mlp: bool = False  # SwiGLU: silu(x W_gate) * (x W_value) -> W_out, hidden int(D * mlp_ratio)
    #                          (EVA-02, AIMv2, DINOv2 giant, DINOv3 S+/H+/7B) [swiglu_mlp, GluMlp]
    mlp_inner_norm: bool = False  # EVA-02: a norm on the MLP's hidden layer, before its output [scale_mlp]
    norm: str = "layernorm"  # "rmsnorm": x / rms(x) * w, no mean subtracted, no bias (AIMv2) [norm_layer]

    # --- Blocks (layers/blocks.py).
    layer_scale: float | None = None  # DeiT-III, DINOv2: residual branches times a learned per-channel
    #                                   scale starting at this value: deep models train stably [init_values]
    layer_scale_mlp: bool = True  # False: layer scale on the attention branch only (Sapiens2) [attn_only_layer_scale]
    post_norm: bool = False  # res-post-norm (Swin v2; timm's rpn ViT, EVA-02 enormous): each branch's output
    #                          is normalised before it is added, x + norm(f(x)), instead of x + f(norm(x))
    parallel: bool = False  # ViT-22B (Dehghani et al. 2023): attention and MLP read the same norm(x), side by
    #                         side: x + ls(attention(h) + mlp(h)); timm's *_xp_*, pwee [ParallelScalingBlock]
    branches: int = 1  # "Three things" (Touvron et al. 2022): each block runs this many attentions side by side,
    #                    summed, then as many MLPs (timm's 18x2: 18 blocks of 2) [ParallelThingsBlock]

    # --- After the blocks: the final norm, the pooling, the head (layers/heads.py).
    final_norm: bool = True  # RADIO, InternViT, PE lang/spatial: no norm at the end at all [final_norm]
    final_norm_eps: float | None = None  # the final norm's eps where it differs from the blocks' (SAM: 1e-6)
    norm_after_pool: bool = False  # GAP ViTs with registers: the final LayerNorm normalises the pooled
    #                                vector instead of every token [fc_norm]
    pool: str = "token"  # what the head reads: "token" (the CLS token), "avg" (mean of the patch
    #                      tokens: GAP ViTs), "map" (attention pooling by a learned query: SigLIP) [global_pool]
    pool_heads: int | None = None  # PE: its attention pool has 8 heads (None: num_heads) [attn_pool_num_heads]
    pool_mlp_ratio: float | None = None  # PE gigantic: its pool's MLP is 4x (None: mlp_ratio) [attn_pool_mlp_ratio]
    pool_reads_prefix: bool = False  # PE: the attention pool reads the CLS token too, not only the patches

    # --- NaFlex (SigLIP 2, RADIO): any size and aspect, the table resized at every forward (NaFlexPatchEmbedding).
    naflex: bool = False  # patches through a Linear, pixels in (row, column, channel) order, plus the patch
    #                       embedding's own table, kept at its grid and resized to each input's [NaFlexVit]
    position_grid: int = 16  # NaFlex: the side of the stored table (RADIO: 128) [pos_embed_grid_size]
    position_keeps_aspect: bool = False  # NaFlex: resized to a square of the longer side, its top-left corner
    #                                      taken, so a patch's position does not stretch with the aspect
    #                                      [pos_embed_ar_preserving]
    factorized_positions: bool = False  # NaFlex: a table per axis, rows and columns, summed [pos_embed='factorized']

    # --- The ViT paper's hybrids: a CNN stem's feature map in place of the image's patches (layers/stems.py).
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

    # --- CaiT: the CLS token joins after the blocks.
    class_attention_blocks: int = 0  # CaiT: the CLS token skips the blocks and joins after them, in this many
    #                                  class-attention blocks that update it alone [depth_token_only]

    # --- Training only: identity at evaluation, so no checkpoint records it.
    drop_path_rate: float = 0.0  # stochastic depth (Huang et al. 2016): in training, each residual branch is
    #                              skipped for a random subset of the samples, block i with probability
    #                              drop_path_rate * i / (depth - 1), rising to this at the last block [drop_path_rate]

    def __post_init__(self):
        problem = self.field_problem()
        if problem:
            raise ValueError(problem)
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

    def field_problem(self) -> str | None:
        """The first field whose type or range is wrong (RULES), in a few words naming it; None where
        all fit. Checked first, before any field is used, so that no other check trips over one."""
        sides = self.img_size if isinstance(self.img_size, tuple) and len(self.img_size) == 2 else (self.img_size,)
        for side in sides:
            problem = field_problem("img_size", side, INT, 1, MAX_SIDE)
            if problem:
                return problem
        checks = [(name, getattr(self, name), *rule) for name, rule in RULES.items()]
        checks += [(name, getattr(self, name), *rule) for name, rule in OPTIONAL.items() if getattr(self, name) is not None]
        checks += [("layer_scale", self.layer_scale, NUMBER, 1e-12, 1e3)] if self.layer_scale is not None else []
        checks += [("stem_depths", depth, INT, 0, 64) for depth in self.stem_depths]
        checks += [("global_blocks", block, INT, 0, 1023) for block in self.global_blocks]  # (past depth: unused)
        for check in checks:
            problem = field_problem(*check)
            if problem:
                return problem
        wrong = [f.name for f in dataclasses.fields(self) if f.type is bool and not isinstance(getattr(self, f.name), bool)]
        if wrong:
            return f"{wrong[0]} is {str(getattr(self, wrong[0]))[:40]!r}, not True or False"
        if len(self.stem_depths) > 8:
            return f"stem_depths has {len(self.stem_depths)} stages, more than 8"
        if self.num_tokens > MAX_TOKENS:
            return f"img_size {self.img_size} makes {self.num_tokens} tokens per image, more than {MAX_TOKENS}"
        return None

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
