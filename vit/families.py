"""The ViT family as data: every supported timm name is a size, a family and timm's default weights.

A family is a handful of `ViTConfig` fields (vit/config.py says what each one does):

    family          differs from the original ViT by                                    mean/std
    vit             -- (the original: CLS token, learned positions, exact GELU)          0.5
    deit            -- (same architecture, trained on ImageNet-1k alone)                 ImageNet
    deit_dist       + a distillation token and its head, the two heads averaged         ImageNet
    deit3           positions for patches only, layer scale 1e-6                         ImageNet
    flexivit        positions for patches only (resized bilinearly), native 240 px      0.5
    dinov2          patch 14, layer scale 1e-5, native 518 px, no classifier             ImageNet
    dinov2_reg      + 4 register tokens, positions for patches only                      ImageNet
    clip            LayerNorm before the blocks, no patch bias, LayerNorm eps 1e-5      OpenAI CLIP
    clip_quick      + QuickGELU (OpenAI's and MetaCLIP's weights)                        OpenAI CLIP
    siglip          no CLS token, attention-pooling head (MAP)                           0.5
    siglip_gap      no CLS token, mean of the patch tokens                               0.5
    gap             no CLS token, mean of the patch tokens (no qkv bias, layer scale)    0.5
    reg_gap         + registers; the final LayerNorm on the pooled vector                0.5
    res_post_norm   no CLS token, mean pooling, each branch normed after it (x + norm(f(x)))   0.5
    radio           NVIDIA RADIO: 7 or 9 registers, positions for patches only, no final norm,
                    positions resized bilinearly                                         OpenAI CLIP
    tips            Google TIPSv2: 1 register, layer scale 1.0, native 448 px           0 / 1
    intern          InternViT-300M: layer scale 0.1, no final norm                       ImageNet
    eva             EVA-01: mean pooling with the norm after it, q and v biases only    OpenAI CLIP
    --- the modern family: rotary or relative positions, SwiGLU, RMSNorm
    beit            no position table: a relative position bias per block; layer scale, mean pooling   0.5
    eva02           2D RoPE (axial, rescaled to a 16 x 16 grid), SwiGLU (+ its inner norm), patch 14   OpenAI CLIP
    eva02_clip      + a norm inside attention, CLS-token pooling                         OpenAI CLIP
    dinov3          RoPE with DINOv3's periods (coordinates in [-1, 1]), 4 registers, no position table   ImageNet
    lingbot         DINOv3's architecture, CLS-token pooling, native 512 px             ImageNet
    rope_vit        RoPE-ViT: axial RoPE (x first, base 100) instead of the table, layer scale   ImageNet
    rope_vit_mixed  RoPE-ViT: RoPE with learned frequencies per block and head          ImageNet
    rope_gap        timm's RoPE + registers + mean pooling                               0.5
    pe_core         Perception Encoder: axial RoPE beside the table, norm before the blocks, MAP head   0.5
    pe_spatial      Perception Encoder's spatial / language towers: no final norm, mean of the patches   0.5
    aimv2           AIMv2: RMSNorm (also after the patch embedding), SwiGLU, no biases, mean pooling   OpenAI CLIP
    relpos          timm's relpos ViTs: no position table; each block's bias per (dy, dx) offset from an MLP of
                    the log-spaced offset (srelpos: one MLP for all blocks); no CLS token, layer scale,
                    mean pooling                                                         0.5
    --- other blocks: how attention and the MLP are arranged, and attention variants
    parallel_xp     ViT-22B's parallel block (attention and MLP from one norm), q/k norms, RMSNorm,
                    a norm before the blocks, positions for the patches only               0.5
    branched        "Three things": 2 attentions side by side, then 2 MLPs; layer scale  0.5
    reg_gap + parallel / differential   timm's pwee (parallel), dwee and dlittle (differential
                    attention), dpwee (both)                                              0.5
    cait            CaiT: talking heads; the CLS token skips the blocks and joins after them in 2
                    class-attention blocks; layer scale, positions for the patches only, 384 px   ImageNet
    naflex          NaFlex (SigLIP 2's, timm's NaFlexVit): patches through a Linear, the table kept at
                    16 x 16 and resized to each input; its own input, images of any size and aspect
                    packed in one batch (vit/naflex.py); registers, layer scale, mean pooling   0.5
    naflex_radio    RADIO's NaFlex: CLS + 7 or 9 registers, a 128 x 128 table resized bilinearly, keeping
                    the aspect, no final norm                                           OpenAI CLIP
    hybrid          the ViT paper's hybrids: tokens from a ResNet's feature map (BiT's ResNet: weight-
                    standardised convs, GroupNorm), patch 1 (8 on the stem alone); MobileCLIP's conv stem   0.5
    hybrid_d        timm's own hybrids on ResNet-D (deep stem, BatchNorm, average-pooled shortcuts)  ImageNet
    sam             Segment Anything's encoder: attention in 14 x 14 windows but in 4 global blocks,
                    decomposed relative positions, no CLS token, a conv neck to 256 channels,
                    LayerNorm eps 1e-5, native 1024 px, no classifier                    ImageNet
    sapiens2        DINOv3's RoPE at 1024 x 768 px, CLS + 8 registers, q/k norms, RMSNorm, SwiGLU,
                    layer scale on attention only, grouped-query attention in the middle blocks   ImageNet

The mean/std above are each name's default; a hub download reads the tag's own from its
config.json (e.g. `vit_large_patch14_clip_224.openai` uses OpenAI's, its default tag 0.5).

Not here: BEiT-3 (a multiway transformer: one set of weights per modality, not a ViT's block).
"""

from dataclasses import dataclass, field
from difflib import get_close_matches

from vit.config import DEFAULT_MEAN, DEFAULT_STD, ViTConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = (DEFAULT_MEAN, DEFAULT_STD)
ZERO_ONE = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # pixels in [0, 1] as they are

# Sizes: width, depth, heads (and the MLP's width where it is not 4x).
# SwiGLU's MLP has three D x hidden matrices where the plain MLP has two, so its hidden width is 2/3
# of the plain 4D: 4 x 2/3 = 8/3 keeps the weights (and the compute) of the MLP the same.
SWIGLU_RATIO = 2.6666666666666665  # = 8 / 3, as EVA-02, AIMv2 and PE write it
SWIGLU_RATIO_AS_TIMM = 2.66667  # timm's rounding (DINOv2 and TIPSv2 giant): int(1536 * 2.66667) = 4096, as 8/3 gives
TINY = dict(embed_dim=192, depth=12, num_heads=3)
XSMALL = dict(embed_dim=256, depth=10, num_heads=4)
SMALL = dict(embed_dim=384, depth=12, num_heads=6)
MEDIUM = dict(embed_dim=512, depth=12, num_heads=8)
MEDIUMD = dict(embed_dim=512, depth=20, num_heads=8)
BETWIXT = dict(embed_dim=640, depth=12, num_heads=10)
BASE = dict(embed_dim=768, depth=12, num_heads=12)
LARGE = dict(embed_dim=1024, depth=24, num_heads=16)
HUGE = dict(embed_dim=1280, depth=32, num_heads=16)
GIANT = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=4.363636363636363)  # MLP 6144 (timm: 48/11)
GIANT2 = dict(embed_dim=1536, depth=40, num_heads=24)  # DINOv2's, RADIO's, TIPS' giant
GIGANTIC = dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.923076923076923)  # MLP 8192 (timm: 64/13)
GIANTOPT = dict(embed_dim=1536, depth=40, num_heads=16)
PLUS = dict(embed_dim=896, depth=12, num_heads=14)
SO150M = dict(embed_dim=896, depth=18, num_heads=14, mlp_ratio=2.572)
SO150M2 = dict(embed_dim=832, depth=21, num_heads=13, mlp_ratio=2.6153846153846154)
SO400M = dict(embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362)
LITTLE = dict(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6)
WEE = dict(embed_dim=256, depth=14, num_heads=4, mlp_ratio=5.0)
AIMV2_LARGE = dict(embed_dim=1024, depth=24, num_heads=8, mlp_ratio=2.75)  # AIMv2's own sizes: 8 heads at 1024
AIMV2_HUGE = dict(embed_dim=1536, depth=24, num_heads=12, mlp_ratio=2.6667)
AIMV2_1B = dict(embed_dim=2048, depth=24, num_heads=16, mlp_ratio=2.75)
AIMV2_3B = dict(embed_dim=3072, depth=24, num_heads=24, mlp_ratio=2.6667)


EVA_KEYS = ("gamma",)  # the families timm has in eva.py and beit.py: layer scale as gamma_1, gamma_2


@dataclass(frozen=True)
class Family:
    """The ViTConfig fields that set a family apart from the original ViT, and its normalisation."""

    fields: dict
    mean_std: tuple = HALF
    timm_keys: tuple[str, ...] = ()  # how its timm files spell some keys (ModelSpec's; a row adds its own)


FAMILIES: dict[str, Family] = {
    "vit": Family({}),
    "deit": Family({}, IMAGENET),
    "deit_dist": Family(dict(distillation_token=True), IMAGENET),
    "deit3": Family(dict(positions_cover_prefix=False, layer_scale=1e-6), IMAGENET),
    "flexivit": Family(dict(img_size=240, positions_cover_prefix=False, position_resize="bilinear")),
    "dinov2": Family(dict(patch_size=14, img_size=518, layer_scale=1e-5, num_classes=0), IMAGENET),
    "dinov2_reg": Family(dict(patch_size=14, img_size=518, layer_scale=1e-5, num_classes=0, register_tokens=4,
                              positions_cover_prefix=False), IMAGENET),
    "clip": Family(dict(norm_before_blocks=True, patch_bias=False, layer_norm_eps=1e-5), OPENAI_CLIP),
    "clip_quick": Family(dict(norm_before_blocks=True, patch_bias=False, layer_norm_eps=1e-5, activation="quick_gelu"),
                         OPENAI_CLIP),
    "siglip": Family(dict(class_token=False, pool="map", num_classes=0)),
    "siglip_gap": Family(dict(class_token=False, pool="avg", num_classes=0)),
    "gap": Family(dict(class_token=False, pool="avg", qkv_bias=False, layer_scale=1e-6)),
    "reg_gap": Family(dict(class_token=False, pool="avg", register_tokens=4, positions_cover_prefix=False,
                           layer_scale=1e-5, norm_after_pool=True)),
    "res_post_norm": Family(dict(class_token=False, pool="avg", qkv_bias=False, post_norm=True, norm_after_pool=True)),
    "radio": Family(dict(register_tokens=7, positions_cover_prefix=False, final_norm=False, num_classes=0,
                         img_size=512, position_resize="bilinear"), OPENAI_CLIP),
    "tips": Family(dict(patch_size=14, img_size=448, register_tokens=1, positions_cover_prefix=False, layer_scale=1.0,
                        num_classes=0), ZERO_ONE),
    "intern": Family(dict(patch_size=14, img_size=448, layer_scale=0.1, final_norm=False, num_classes=0), IMAGENET),
    "eva": Family(dict(patch_size=14, pool="avg", norm_after_pool=True, key_bias=False), OPENAI_CLIP,
                  timm_keys=EVA_KEYS),
    # --- The modern family: rotary or relative positions, SwiGLU, RMSNorm
    "beit": Family(dict(absolute_positions=False, relative_position_bias=True, key_bias=False, layer_scale=1e-5,
                        pool="avg", norm_after_pool=True), timm_keys=EVA_KEYS),
    "eva02": Family(dict(patch_size=14, rope="axial", rope_reference_grid=16, key_bias=False, gated_mlp=True,
                         mlp_ratio=SWIGLU_RATIO, pool="avg", norm_after_pool=True, num_classes=0), OPENAI_CLIP,
                  timm_keys=EVA_KEYS),
    "eva02_clip": Family(dict(patch_size=14, rope="axial", rope_reference_grid=16, key_bias=False, gated_mlp=True,
                              mlp_ratio=SWIGLU_RATIO, mlp_inner_norm=True, attention_inner_norm=True), OPENAI_CLIP,
                  timm_keys=EVA_KEYS),
    "dinov3": Family(dict(rope="dinov3", rope_temperature=100.0, absolute_positions=False, register_tokens=4,
                          layer_scale=1e-5, key_bias=False, qkv_bias=False, layer_norm_eps=1e-5, pool="avg",
                          num_classes=0, img_size=256), IMAGENET, timm_keys=EVA_KEYS),
    "lingbot": Family(dict(rope="dinov3", rope_temperature=100.0, absolute_positions=False, register_tokens=4,
                           layer_scale=1e-5, key_bias=False, layer_norm_eps=1e-5, num_classes=0, img_size=512), IMAGENET,
                  timm_keys=EVA_KEYS),
    "rope_vit": Family(dict(rope="axial", rope_temperature=100.0, rope_xy=True, absolute_positions=False,
                            layer_scale=1e-5), IMAGENET, timm_keys=EVA_KEYS),
    "rope_vit_mixed": Family(dict(rope="mixed", rope_temperature=10.0, rope_xy=True, absolute_positions=False,
                                  layer_scale=1e-5), IMAGENET, timm_keys=EVA_KEYS),
    "rope_gap": Family(dict(img_size=256, rope="axial", rope_reference_grid=16, absolute_positions=False,
                            class_token=False, register_tokens=1, key_bias=False, layer_scale=1e-5, pool="avg",
                            norm_after_pool=True), timm_keys=EVA_KEYS),
    "pe_core": Family(dict(rope="axial", rope_xy=True, rope_offset=1.0, norm_before_blocks=True, patch_bias=False,
                           layer_norm_eps=1e-5, pool="map", pool_heads=8, pool_mlp_ratio=4.0, pool_reads_prefix=True),
                  timm_keys=EVA_KEYS),
    "pe_spatial": Family(dict(rope="axial", rope_xy=True, rope_offset=1.0, rope_reference_grid=32,
                              norm_before_blocks=True, patch_bias=False, layer_norm_eps=1e-5, pool="avg",
                              final_norm=False, num_classes=0), timm_keys=EVA_KEYS),
    "aimv2": Family(dict(patch_size=14, class_token=False, pool="avg", qkv_bias=False, proj_bias=False, gated_mlp=True,
                         norm="rmsnorm", layer_norm_eps=1e-5, norm_after_patches=True, num_classes=0), OPENAI_CLIP,
                   timm_keys=("swiglu",)),
    "relpos": Family(dict(absolute_positions=False, relative_position_mlp=128, class_token=False, pool="avg",
                          layer_scale=1e-6, qkv_bias=False, norm_after_pool=True)),
    # --- Other blocks: how attention and the MLP are arranged, and attention variants
    "parallel_xp": Family(dict(parallel=True, qk_norm=True, norm="rmsnorm", norm_before_blocks=True, patch_bias=False,
                               positions_cover_prefix=False, qkv_bias=False), timm_keys=("parallel",)),
    "branched": Family(dict(branches=2, layer_scale=1e-5)),
    "cait": Family(dict(class_attention_blocks=2, talking_heads=True, positions_cover_prefix=False, layer_scale=1e-5,
                        img_size=384), IMAGENET, timm_keys=EVA_KEYS),
    "naflex": Family(dict(naflex=True, absolute_positions=False, class_token=False, img_size=384, layer_scale=1e-5,
                          pool="avg", register_tokens=4, norm_after_pool=True), timm_keys=("naflex",)),
    "naflex_radio": Family(dict(naflex=True, absolute_positions=False, img_size=512, position_grid=128,
                                position_resize="bilinear", position_keeps_aspect=True, register_tokens=7,
                                final_norm=False, num_classes=0), OPENAI_CLIP, timm_keys=("naflex",)),
    "hybrid": Family(dict(stem="bit", patch_size=1)),
    "hybrid_d": Family(dict(stem="resnet_d", patch_size=1, mlp_ratio=3.0), IMAGENET, timm_keys=("resnet_d",)),
    "sam": Family(dict(img_size=1024, class_token=False, positions_cover_prefix=False, pool="avg", window_size=14,
                       decomposed_relative_positions=True, layer_norm_eps=1e-5, neck_channels=256, num_classes=0),
                  IMAGENET, timm_keys=("sam",)),
    "sapiens2": Family(dict(img_size=(1024, 768), rope="dinov3", rope_temperature=100.0, absolute_positions=False,
                            register_tokens=8, layer_scale=1.0, layer_scale_mlp=False, qk_norm=True, gated_mlp=True,
                            norm="rmsnorm", full_attention_ends=8, num_classes=0), IMAGENET,
                       timm_keys=("gamma", "qkv_biased")),
}

# timm's ViT names that are not here (see the docstring). BEiT-3's multiway names are not ViTs.
LEFT_OUT: tuple[str, ...] = ()

@dataclass(frozen=True)
class ModelSpec:
    """One timm name: its family, its configuration, timm's default weights for it."""

    family: str
    config: dict  # ViTConfig fields
    weights: str | None  # timm's default hub id; None where timm publishes none for the name
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # How timm's file spells some keys (weights/convert.py's TIMM_SPELLINGS): "gamma" (eva.py, beit.py),
    # "qkv" (q_proj, k_proj, v_proj), "swiglu" (fc1_g, fc1_x).
    timm_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """A table row: the name's family, its size, timm's default weights tag (or whole hub id, or
    None: timm has none), and anything else that differs from its family."""

    family: str
    size: dict
    tag: str | None
    mean_std: tuple | None = None  # None: the family's
    timm_keys: tuple[str, ...] = ()
    fields: dict = field(default_factory=dict)  # other ViTConfig fields: patch size, native size, ...


def row(family: str, size: dict, tag: str | None, mean_std: tuple | None = None, timm_keys: tuple = (),
        **fields) -> Row:
    return Row(family, size, tag, mean_std, timm_keys, fields)


TABLE: dict[str, Row] = {
    # The original ViT (timm's AugReg weights, the paper's originals, DINO)
    "vit_base_patch8_224": row("vit", BASE, "augreg2_in21k_ft_in1k", patch_size=8),
    "vit_base_patch16_224": row("vit", BASE, "augreg2_in21k_ft_in1k"),
    "vit_base_patch16_224_miil": row("vit", BASE, "in21k", mean_std=ZERO_ONE, num_classes=11221, qkv_bias=False),
    "vit_base_patch16_384": row("vit", BASE, "augreg_in21k_ft_in1k", img_size=384),
    "vit_base_patch16_plus_240": row("vit", PLUS, None, img_size=240, layer_scale=1e-05),
    "vit_base_patch32_224": row("vit", BASE, "augreg_in21k_ft_in1k", patch_size=32),
    "vit_base_patch32_384": row("vit", BASE, "augreg_in21k_ft_in1k", img_size=384, patch_size=32),
    "vit_base_patch32_plus_256": row("vit", PLUS, None, img_size=256, patch_size=32, layer_scale=1e-05),
    "vit_giant_patch14_224": row("vit", GIANT, None, patch_size=14),
    "vit_gigantic_patch14_224": row("vit", GIGANTIC, None, patch_size=14),
    "vit_huge_patch14_224": row("vit", HUGE, "orig_in21k", patch_size=14, num_classes=0),
    "vit_large_patch14_224": row("vit", LARGE, None, patch_size=14),
    "vit_large_patch16_224": row("vit", LARGE, "augreg_in21k_ft_in1k"),
    "vit_large_patch16_384": row("vit", LARGE, "augreg_in21k_ft_in1k", img_size=384),
    "vit_large_patch32_224": row("vit", LARGE, "orig_in21k", patch_size=32, num_classes=0),
    "vit_large_patch32_384": row("vit", LARGE, "orig_in21k_ft_in1k", img_size=384, patch_size=32),
    "vit_small_patch8_224": row("vit", SMALL, "dino", mean_std=IMAGENET, patch_size=8, num_classes=0),
    "vit_small_patch16_36x1_224": row("vit", dict(embed_dim=384, depth=36, num_heads=6, mlp_ratio=4.0), None,
                                      layer_scale=1e-05),
    "vit_small_patch16_224": row("vit", SMALL, "augreg_in21k_ft_in1k"),
    "vit_small_patch16_384": row("vit", SMALL, "augreg_in21k_ft_in1k", img_size=384),
    "vit_small_patch32_224": row("vit", SMALL, "augreg_in21k_ft_in1k", patch_size=32),
    "vit_small_patch32_384": row("vit", SMALL, "augreg_in21k_ft_in1k", img_size=384, patch_size=32),
    "vit_tiny_patch16_224": row("vit", TINY, "augreg_in21k_ft_in1k"),
    "vit_tiny_patch16_384": row("vit", TINY, "augreg_in21k_ft_in1k", img_size=384),
    # DeiT (Touvron et al. 2021): ImageNet-1k only; the distilled ones learn from a CNN teacher
    "deit_base_patch16_224": row("deit", BASE, "fb_in1k"),
    "deit_base_patch16_384": row("deit", BASE, "fb_in1k", img_size=384),
    "deit_small_patch16_224": row("deit", SMALL, "fb_in1k"),
    "deit_tiny_patch16_224": row("deit", TINY, "fb_in1k"),
    "deit_base_distilled_patch16_224": row("deit_dist", BASE, "fb_in1k"),
    "deit_base_distilled_patch16_384": row("deit_dist", BASE, "fb_in1k", img_size=384),
    "deit_small_distilled_patch16_224": row("deit_dist", SMALL, "fb_in1k"),
    "deit_tiny_distilled_patch16_224": row("deit_dist", TINY, "fb_in1k"),
    # DeiT-III (Touvron et al. 2022)
    "deit3_base_patch16_224": row("deit3", BASE, "fb_in1k"),
    "deit3_base_patch16_384": row("deit3", BASE, "fb_in1k", img_size=384),
    "deit3_huge_patch14_224": row("deit3", HUGE, "fb_in1k", patch_size=14),
    "deit3_large_patch16_224": row("deit3", LARGE, "fb_in1k"),
    "deit3_large_patch16_384": row("deit3", LARGE, "fb_in1k", img_size=384),
    "deit3_medium_patch16_224": row("deit3", MEDIUM, "fb_in1k"),
    "deit3_small_patch16_224": row("deit3", SMALL, "fb_in1k"),
    "deit3_small_patch16_384": row("deit3", SMALL, "fb_in1k", img_size=384),
    # FlexiViT (Beyer et al. 2023)
    "flexivit_base": row("flexivit", BASE, "1200ep_in1k"),
    "flexivit_large": row("flexivit", LARGE, "1200ep_in1k"),
    "flexivit_small": row("flexivit", SMALL, "1200ep_in1k"),
    # EVA-01 (Fang et al. 2022)
    "eva_large_patch14_196": row("eva", LARGE, "in22k_ft_in22k_in1k", img_size=196, key_bias=True),
    "eva_large_patch14_336": row("eva", LARGE, "in22k_ft_in22k_in1k", img_size=336, key_bias=True),
    "eva02_enormous_patch14_clip_224": row("eva",
                                           dict(embed_dim=1792, depth=64, num_heads=16, mlp_ratio=8.571428571428571),
                                           "laion2b", num_classes=1024, pool="token", norm_after_pool=False,
                                           post_norm=True),
    "eva_giant_patch14_224": row("eva", GIANT, "clip_ft_in1k"),
    "eva_giant_patch14_336": row("eva", GIANT, "clip_ft_in1k", img_size=336),
    "eva_giant_patch14_560": row("eva", GIANT, "m30m_ft_in22k_in1k", mean_std=IMAGENET, img_size=560),
    "eva_giant_patch14_clip_224": row("eva", GIANT, "laion400m", num_classes=1024, pool="token", norm_after_pool=False),
    # DINOv2 (Oquab et al. 2023), and with registers (Darcet et al. 2023): self-supervised backbones; giant: SwiGLU
    "vit_base_patch14_dinov2": row("dinov2", BASE, "lvd142m"),
    "vit_giant_patch14_dinov2": row("dinov2", GIANT2, "lvd142m", mlp_ratio=SWIGLU_RATIO_AS_TIMM, gated_mlp=True),
    "vit_large_patch14_dinov2": row("dinov2", LARGE, "lvd142m"),
    "vit_small_patch14_dinov2": row("dinov2", SMALL, "lvd142m"),
    "vit_base_patch14_reg4_dinov2": row("dinov2_reg", BASE, "lvd142m"),
    "vit_giant_patch14_reg4_dinov2": row("dinov2_reg", GIANT2, "lvd142m", mlp_ratio=SWIGLU_RATIO_AS_TIMM, gated_mlp=True),
    "vit_large_patch14_reg4_dinov2": row("dinov2_reg", LARGE, "lvd142m"),
    "vit_small_patch14_reg4_dinov2": row("dinov2_reg", SMALL, "lvd142m"),
    # CLIP image towers (Radford et al. 2021; OpenCLIP, DFN, MetaCLIP weights)
    "vit_base_patch16_clip_224": row("clip", BASE, "laion2b_ft_in12k_in1k"),
    "vit_base_patch16_clip_384": row("clip", BASE, "laion2b_ft_in12k_in1k", img_size=384),
    "vit_base_patch16_plus_clip_240": row("clip", PLUS, "laion400m_e32", img_size=240, num_classes=640),
    "vit_base_patch32_clip_224": row("clip", BASE, "laion2b_ft_in12k_in1k", patch_size=32),
    "vit_base_patch32_clip_256": row("clip", BASE, "datacompxl", img_size=256, patch_size=32, num_classes=512),
    "vit_base_patch32_clip_384": row("clip", BASE, "laion2b_ft_in12k_in1k", img_size=384, patch_size=32),
    "vit_base_patch32_clip_448": row("clip", BASE, "laion2b_ft_in12k_in1k", img_size=448, patch_size=32),
    "vit_betwixt_patch32_clip_224": row("clip", BETWIXT, "tinyclip_laion400m", patch_size=32, num_classes=512),
    "vit_giant_patch14_clip_224": row("clip", GIANT, "laion2b", patch_size=14, num_classes=1024),
    "vit_gigantic_patch14_clip_224": row("clip", GIGANTIC, "laion2b", patch_size=14, num_classes=1280),
    "vit_gigantic_patch14_clip_378": row("clip", GIGANTIC, "metaclip2_worldwide", img_size=378, patch_size=14,
                                         num_classes=1280),
    "vit_huge_patch14_clip_224": row("clip", HUGE, "laion2b_ft_in12k_in1k", patch_size=14),
    "vit_huge_patch14_clip_336": row("clip", HUGE, "laion2b_ft_in12k_in1k", img_size=336, patch_size=14),
    "vit_huge_patch14_clip_378": row("clip", HUGE, "dfn5b", img_size=378, patch_size=14, num_classes=1024),
    "vit_large_patch14_clip_224": row("clip", LARGE, "laion2b_ft_in12k_in1k", mean_std=HALF, patch_size=14),
    "vit_large_patch14_clip_336": row("clip", LARGE, "laion2b_ft_in12k_in1k", mean_std=HALF, img_size=336,
                                      patch_size=14),
    "vit_medium_patch16_clip_224": row("clip", MEDIUM, "tinyclip_yfcc15m", num_classes=512),
    "vit_medium_patch32_clip_224": row("clip", MEDIUM, "tinyclip_laion400m", patch_size=32, num_classes=512),
    "vit_xsmall_patch16_clip_224": row("clip", XSMALL, "tinyclip_yfcc15m", num_classes=512),
    # (QuickGELU names: timm keeps their weights under the plain CLIP name's hub repos)
    "vit_base_patch16_clip_quickgelu_224": row("clip_quick", BASE, "timm/vit_base_patch16_clip_224.metaclip_2pt5b",
                                               num_classes=512),
    "vit_base_patch32_clip_quickgelu_224": row("clip_quick", BASE, "timm/vit_base_patch32_clip_224.laion400m_e32",
                                               patch_size=32, num_classes=512),
    "vit_gigantic_patch14_clip_quickgelu_224": row("clip_quick", GIGANTIC,
                                                   "timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b", patch_size=14,
                                                   num_classes=1280),
    "vit_huge_patch14_clip_quickgelu_224": row("clip_quick", HUGE, "timm/vit_huge_patch14_clip_224.dfn5b",
                                               patch_size=14, num_classes=1024),
    "vit_huge_patch14_clip_quickgelu_378": row("clip_quick", HUGE, "timm/vit_huge_patch14_clip_378.dfn5b",
                                               img_size=378, patch_size=14, num_classes=1024),
    "vit_large_patch14_clip_quickgelu_224": row("clip_quick", LARGE, "timm/vit_large_patch14_clip_224.dfn2b",
                                                patch_size=14, num_classes=768),
    "vit_large_patch14_clip_quickgelu_336": row("clip_quick", LARGE, "timm/vit_large_patch14_clip_336.openai",
                                                img_size=336, patch_size=14, num_classes=768),
    # SigLIP image towers (Zhai et al. 2023; SigLIP 2): attention-pooling head, or its GAP variant
    "vit_base_patch16_siglip_224": row("siglip", BASE, "v2_webli"),
    "vit_base_patch16_siglip_256": row("siglip", BASE, "v2_webli", img_size=256),
    "vit_base_patch16_siglip_384": row("siglip", BASE, "v2_webli", img_size=384),
    "vit_base_patch16_siglip_512": row("siglip", BASE, "v2_webli", img_size=512),
    "vit_base_patch32_siglip_256": row("siglip", BASE, "v2_webli", img_size=256, patch_size=32, activation="gelu_tanh"),
    "vit_giantopt_patch16_siglip_256": row("siglip", GIANTOPT, "v2_webli", img_size=256, activation="gelu_tanh"),
    "vit_giantopt_patch16_siglip_384": row("siglip", GIANTOPT, "v2_webli", img_size=384, activation="gelu_tanh"),
    "vit_large_patch16_siglip_256": row("siglip", LARGE, "v2_webli", img_size=256),
    "vit_large_patch16_siglip_384": row("siglip", LARGE, "v2_webli", img_size=384),
    "vit_large_patch16_siglip_512": row("siglip", LARGE, "v2_webli", img_size=512, activation="gelu_tanh"),
    "vit_so400m_patch14_siglip_224": row("siglip", SO400M, "v2_webli", patch_size=14),
    "vit_so400m_patch14_siglip_378": row("siglip", SO400M, "v2_webli", img_size=378, patch_size=14),
    "vit_so400m_patch14_siglip_384": row("siglip", SO400M, "webli", img_size=384, patch_size=14),
    "vit_so400m_patch16_siglip_256": row("siglip", SO400M, "v2_webli", img_size=256, activation="gelu_tanh"),
    "vit_so400m_patch16_siglip_384": row("siglip", SO400M, "v2_webli", img_size=384, activation="gelu_tanh"),
    "vit_so400m_patch16_siglip_512": row("siglip", SO400M, "v2_webli", img_size=512, activation="gelu_tanh"),
    "vit_base_patch16_siglip_gap_224": row("siglip_gap", BASE, "v2_webli"),
    "vit_base_patch16_siglip_gap_256": row("siglip_gap", BASE, "v2_webli", img_size=256),
    "vit_base_patch16_siglip_gap_384": row("siglip_gap", BASE, "v2_webli", img_size=384),
    "vit_base_patch16_siglip_gap_512": row("siglip_gap", BASE, "v2_webli", img_size=512),
    "vit_base_patch32_siglip_gap_256": row("siglip_gap", BASE, "v2_webli", img_size=256, patch_size=32,
                                           activation="gelu_tanh"),
    "vit_giantopt_patch16_siglip_gap_256": row("siglip_gap", GIANTOPT, "v2_webli", img_size=256,
                                               activation="gelu_tanh"),
    "vit_giantopt_patch16_siglip_gap_384": row("siglip_gap", GIANTOPT, "v2_webli", img_size=384,
                                               activation="gelu_tanh"),
    "vit_large_patch16_siglip_gap_256": row("siglip_gap", LARGE, "v2_webli", img_size=256),
    "vit_large_patch16_siglip_gap_384": row("siglip_gap", LARGE, "v2_webli", img_size=384),
    "vit_large_patch16_siglip_gap_512": row("siglip_gap", LARGE, "v2_webli", img_size=512, activation="gelu_tanh"),
    "vit_so400m_patch14_siglip_gap_224": row("siglip_gap", SO400M, "v2_webli", patch_size=14),
    "vit_so400m_patch14_siglip_gap_378": row("siglip_gap", SO400M, "v2_webli", img_size=378, patch_size=14),
    "vit_so400m_patch14_siglip_gap_384": row("siglip_gap", SO400M, "webli", img_size=384, patch_size=14),
    "vit_so400m_patch14_siglip_gap_448": row("siglip_gap", SO400M, "pali_mix", img_size=448, patch_size=14),
    "vit_so400m_patch14_siglip_gap_896": row("siglip_gap", SO400M, "pali_pt", img_size=896, patch_size=14),
    "vit_so400m_patch16_siglip_gap_256": row("siglip_gap", SO400M, "v2_webli", img_size=256, activation="gelu_tanh"),
    "vit_so400m_patch16_siglip_gap_384": row("siglip_gap", SO400M, "v2_webli", img_size=384, activation="gelu_tanh"),
    "vit_so400m_patch16_siglip_gap_512": row("siglip_gap", SO400M, "v2_webli", img_size=512, activation="gelu_tanh"),
    # Global-average-pool ViTs (timm's own training recipes)
    "vit_base_patch16_gap_224": row("gap", dict(embed_dim=768, depth=12, num_heads=16, mlp_ratio=4.0), None,
                                    layer_scale=None, qkv_bias=True),
    "vit_betwixt_patch16_gap_256": row("gap", BETWIXT, None, img_size=256),
    "vit_giant_patch16_gap_224": row("gap", GIANT, None, mean_std=IMAGENET, num_classes=0, layer_scale=None,
                                     qkv_bias=True),
    "vit_huge_patch14_gap_224": row("gap", HUGE, None, mean_std=IMAGENET, patch_size=14, num_classes=0,
                                    layer_scale=None, qkv_bias=True),
    "vit_huge_patch16_gap_448": row("gap", HUGE, None, mean_std=IMAGENET, img_size=448, num_classes=0,
                                    layer_scale=None, qkv_bias=True),
    "vit_medium_patch16_gap_240": row("gap", MEDIUM, "sw_in12k", img_size=240, num_classes=11821),
    "vit_medium_patch16_gap_256": row("gap", MEDIUM, "sw_in12k_ft_in1k", img_size=256),
    "vit_medium_patch16_gap_384": row("gap", MEDIUM, "sw_in12k_ft_in1k", img_size=384),
    "vit_base_patch16_reg4_gap_256": row("reg_gap", BASE, None, img_size=256, layer_scale=None),
    "vit_betwixt_patch16_reg1_gap_256": row("reg_gap", BETWIXT, "sbb_in1k", img_size=256, register_tokens=1),
    "vit_betwixt_patch16_reg4_gap_256": row("reg_gap", BETWIXT, "sbb2_e200_in12k_ft_in1k", img_size=256),
    "vit_betwixt_patch16_reg4_gap_384": row("reg_gap", BETWIXT, "sbb2_e200_in12k_ft_in1k", img_size=384),
    "vit_little_patch16_reg1_gap_256": row("reg_gap", LITTLE, "sbb_in12k_ft_in1k", img_size=256, register_tokens=1),
    "vit_little_patch16_reg4_gap_256": row("reg_gap", LITTLE, "sbb_in1k", img_size=256),
    "vit_medium_patch16_reg1_gap_256": row("reg_gap", MEDIUM, "sbb_in1k", img_size=256, register_tokens=1),
    "vit_medium_patch16_reg4_gap_256": row("reg_gap", MEDIUM, "sbb_in12k_ft_in1k", img_size=256),
    "vit_mediumd_patch16_reg4_gap_256": row("reg_gap", MEDIUMD, "sbb2_e200_in12k_ft_in1k", img_size=256),
    "vit_mediumd_patch16_reg4_gap_384": row("reg_gap", MEDIUMD, "sbb2_e200_in12k_ft_in1k", img_size=384),
    "vit_so150m2_patch16_reg1_gap_256": row("reg_gap", SO150M2, "sbb_e200_in12k_ft_in1k", img_size=256,
                                            register_tokens=1, positions_cover_prefix=True, qkv_bias=False),
    "vit_so150m2_patch16_reg1_gap_384": row("reg_gap", SO150M2, "sbb_e200_in12k_ft_in1k", img_size=384,
                                            register_tokens=1, positions_cover_prefix=True, qkv_bias=False),
    "vit_so150m2_patch16_reg1_gap_448": row("reg_gap", SO150M2, "sbb_e200_in12k_ft_in1k", img_size=448,
                                            register_tokens=1, positions_cover_prefix=True, qkv_bias=False),
    "vit_so150m_patch16_reg4_gap_256": row("reg_gap", SO150M, "sbb_e250_in12k_ft_in1k", img_size=256,
                                           positions_cover_prefix=True, layer_scale=None, norm_after_pool=False),
    "vit_so150m_patch16_reg4_gap_384": row("reg_gap", SO150M, "sbb_e250_in12k_ft_in1k", img_size=384,
                                           positions_cover_prefix=True, layer_scale=None, norm_after_pool=False),
    "vit_so150m_patch16_reg4_map_256": row("reg_gap", SO150M, None, img_size=256, positions_cover_prefix=True,
                                           layer_scale=None, pool="map", norm_after_pool=False),
    "vit_wee_patch16_reg1_gap_256": row("reg_gap", WEE, "sbb_in1k", img_size=256, register_tokens=1),
    # Res-post-norm ViT
    "vit_base_patch16_rpn_224": row("res_post_norm", BASE, "sw_in1k"),
    # NVIDIA's RADIO (agglomerative distillation)
    "vit_base_patch16_radio_v3": row("radio", BASE, "c_radio", layer_scale=1e-05, position_resize="bilinear_corners"),
    "vit_giant_patch16_radio_v3": row("radio", GIANT2, "c_radio"),
    "vit_huge_patch16_radio_v3": row("radio", HUGE, "c_radio", position_resize="bilinear_corners"),
    "vit_huge_patch16_radio_v4": row("radio", HUGE, "c_radio", register_tokens=9),
    "vit_large_patch16_radio_v3": row("radio", LARGE, "c_radio", layer_scale=1e-05),
    "vit_so400m_patch16_radio_v4": row("radio", SO400M, "c_radio", mlp_ratio=3.736111111111111, register_tokens=9),
    # Google's TIPSv2
    "vit_base_patch14_reg1_tipsv2": row("tips", BASE, "webli"),
    "vit_giant_patch14_reg1_tipsv2": row("tips", GIANT2, "webli", mlp_ratio=SWIGLU_RATIO_AS_TIMM, gated_mlp=True),
    "vit_large_patch14_reg1_tipsv2": row("tips", LARGE, "webli"),
    "vit_so400m_patch14_reg1_tipsv2": row("tips", SO400M, "webli", mlp_ratio=3.736111111111111),
    # InternViT-300M (distilled)
    "vit_intern300m_patch14_448": row("intern", LARGE, "ogvl_dist"),
    # AIMv2 (Fini et al. 2024): RMSNorm, SwiGLU, no biases
    "aimv2_large_patch14_224": row("aimv2", AIMV2_LARGE, "apple_pt"),
    "aimv2_large_patch14_336": row("aimv2", AIMV2_LARGE, "apple_pt", img_size=336),
    "aimv2_large_patch14_448": row("aimv2", AIMV2_LARGE, "apple_pt", img_size=448),
    "aimv2_huge_patch14_224": row("aimv2", AIMV2_HUGE, "apple_pt"),
    "aimv2_huge_patch14_336": row("aimv2", AIMV2_HUGE, "apple_pt", img_size=336),
    "aimv2_huge_patch14_448": row("aimv2", AIMV2_HUGE, "apple_pt", img_size=448),
    "aimv2_1b_patch14_224": row("aimv2", AIMV2_1B, "apple_pt"),
    "aimv2_1b_patch14_336": row("aimv2", AIMV2_1B, "apple_pt", img_size=336),
    "aimv2_1b_patch14_448": row("aimv2", AIMV2_1B, "apple_pt", img_size=448),
    "aimv2_3b_patch14_224": row("aimv2", AIMV2_3B, "apple_pt"),
    "aimv2_3b_patch14_336": row("aimv2", AIMV2_3B, "apple_pt", img_size=336),
    "aimv2_3b_patch14_448": row("aimv2", AIMV2_3B, "apple_pt", img_size=448),
    # BEiT (Bao et al. 2021) and BEiT v2: relative position bias
    "beit_base_patch16_224": row("beit", BASE, "in22k_ft_in22k_in1k", layer_scale=0.1),
    "beit_base_patch16_384": row("beit", BASE, "in22k_ft_in22k_in1k", img_size=384, layer_scale=0.1),
    "beit_large_patch16_224": row("beit", LARGE, "in22k_ft_in22k_in1k"),
    "beit_large_patch16_384": row("beit", LARGE, "in22k_ft_in22k_in1k", img_size=384),
    "beit_large_patch16_512": row("beit", LARGE, "in22k_ft_in22k_in1k", img_size=512),
    "beitv2_base_patch16_224": row("beit", BASE, "in1k_ft_in22k_in1k", mean_std=IMAGENET),
    "beitv2_large_patch16_224": row("beit", LARGE, "in1k_ft_in22k_in1k", mean_std=IMAGENET),
    # EVA-02 (Fang et al. 2023): RoPE, SwiGLU
    "eva02_base_patch14_224": row("eva02", BASE, "mim_in22k", timm_keys=("qkv", "swiglu"), mlp_inner_norm=True),
    "eva02_base_patch14_448": row("eva02", BASE, "mim_in22k_ft_in22k_in1k", timm_keys=("qkv", "swiglu"), img_size=448,
                                  num_classes=1000, mlp_inner_norm=True),
    "eva02_large_patch14_224": row("eva02", LARGE, "mim_in22k", timm_keys=("qkv", "swiglu"), mlp_inner_norm=True),
    "eva02_large_patch14_448": row("eva02", LARGE, "mim_in22k_ft_in22k_in1k", timm_keys=("qkv", "swiglu"),
                                   img_size=448, num_classes=1000, mlp_inner_norm=True),
    "eva02_small_patch14_224": row("eva02", SMALL, "mim_in22k"),
    "eva02_small_patch14_336": row("eva02", SMALL, "mim_in22k_ft_in1k", img_size=336, num_classes=1000),
    "eva02_tiny_patch14_224": row("eva02", TINY, "mim_in22k"),
    "eva02_tiny_patch14_336": row("eva02", TINY, "mim_in22k_ft_in1k", img_size=336, num_classes=1000),
    "eva02_base_patch16_clip_224": row("eva02_clip", BASE, "merged2b", timm_keys=("qkv", "swiglu"), patch_size=16,
                                       num_classes=512),
    "eva02_large_patch14_clip_224": row("eva02_clip", LARGE, "merged2b", timm_keys=("qkv", "swiglu"), num_classes=768),
    "eva02_large_patch14_clip_336": row("eva02_clip", LARGE, "merged2b", timm_keys=("qkv", "swiglu"), img_size=336,
                                        num_classes=768),
    # DINOv3 (Simeoni et al. 2025): RoPE with its periods, registers
    "vit_7b_patch16_dinov3": row("dinov3", dict(embed_dim=4096, depth=40, num_heads=32, mlp_ratio=2.0), "lvd1689m",
                                 timm_keys=("swiglu",), gated_mlp=True),
    "vit_base_patch16_dinov3": row("dinov3", BASE, "lvd1689m"),
    "vit_base_patch16_dinov3_qkvb": row("dinov3", BASE, "lvd1689m", qkv_bias=True),
    "vit_huge_plus_patch16_dinov3": row("dinov3", dict(embed_dim=1280, depth=32, num_heads=20, mlp_ratio=4.0),
                                        "lvd1689m", timm_keys=("swiglu",), gated_mlp=True),
    "vit_huge_plus_patch16_dinov3_qkvb": row("dinov3", dict(embed_dim=1280, depth=32, num_heads=20, mlp_ratio=4.0),
                                             "lvd1689m", timm_keys=("swiglu",), qkv_bias=True, gated_mlp=True),
    "vit_large_patch16_dinov3": row("dinov3", LARGE, "lvd1689m"),
    "vit_large_patch16_dinov3_qkvb": row("dinov3", LARGE, "lvd1689m", qkv_bias=True),
    "vit_small_patch16_dinov3": row("dinov3", SMALL, "lvd1689m"),
    "vit_small_patch16_dinov3_qkvb": row("dinov3", SMALL, "lvd1689m", qkv_bias=True),
    "vit_small_plus_patch16_dinov3": row("dinov3", SMALL, "lvd1689m", timm_keys=("swiglu",), gated_mlp=True),
    "vit_small_plus_patch16_dinov3_qkvb": row("dinov3", SMALL, "lvd1689m", timm_keys=("swiglu",), qkv_bias=True,
                                              gated_mlp=True),
    "vit_tiny_patch16_dinov3_qkvb": row("dinov3", TINY, "eupe_lvd1689m", qkv_bias=True),
    # LingBot-Vision: DINOv3's architecture (weights outside timm's hub org)
    "vit_base_patch16_lingbot": row("lingbot", BASE, "belfner/vit_base_patch16_lingbot.robbyant"),
    "vit_giant_patch16_lingbot": row("lingbot", GIANT2, "belfner/vit_giant_patch16_lingbot.robbyant",
                                     timm_keys=("swiglu",), mlp_ratio=SWIGLU_RATIO, qkv_bias=False,
                                     gated_mlp=True),
    "vit_large_patch16_lingbot": row("lingbot", LARGE, "belfner/vit_large_patch16_lingbot.robbyant"),
    "vit_small_patch16_lingbot": row("lingbot", SMALL, "belfner/vit_small_patch16_lingbot.robbyant"),
    # RoPE-ViT (Heo et al. 2024): axial or mixed RoPE, with (ape) or without the position table
    "vit_base_patch16_rope_224": row("rope_vit", BASE, "naver_in1k"),
    "vit_base_patch16_rope_ape_224": row("rope_vit", BASE, "naver_in1k", positions_cover_prefix=False,
                                         absolute_positions=True),
    "vit_large_patch16_rope_224": row("rope_vit", LARGE, "naver_in1k"),
    "vit_large_patch16_rope_ape_224": row("rope_vit", LARGE, "naver_in1k", positions_cover_prefix=False,
                                          absolute_positions=True),
    "vit_small_patch16_rope_224": row("rope_vit", SMALL, "naver_in1k"),
    "vit_small_patch16_rope_ape_224": row("rope_vit", SMALL, "naver_in1k", positions_cover_prefix=False,
                                          absolute_positions=True),
    "vit_base_patch16_rope_mixed_224": row("rope_vit_mixed", BASE, "naver_in1k"),
    "vit_base_patch16_rope_mixed_ape_224": row("rope_vit_mixed", BASE, "naver_in1k", positions_cover_prefix=False,
                                               absolute_positions=True),
    "vit_large_patch16_rope_mixed_224": row("rope_vit_mixed", LARGE, "naver_in1k"),
    "vit_large_patch16_rope_mixed_ape_224": row("rope_vit_mixed", LARGE, "naver_in1k", positions_cover_prefix=False,
                                                absolute_positions=True),
    "vit_small_patch16_rope_mixed_224": row("rope_vit_mixed", SMALL, "naver_in1k"),
    "vit_small_patch16_rope_mixed_ape_224": row("rope_vit_mixed", SMALL, "naver_in1k", positions_cover_prefix=False,
                                                absolute_positions=True),
    # timm's RoPE ViTs with registers and mean pooling
    "vit_base_patch16_rope_reg1_gap_256": row("rope_gap", BASE, "sbb_in1k"),
    "vit_betwixt_patch16_rope_reg4_gap_256": row("rope_gap", BETWIXT, "sbb_in1k", mean_std=OPENAI_CLIP,
                                                 register_tokens=4),
    "vit_medium_patch16_rope_reg1_gap_256": row("rope_gap", MEDIUM, "sbb_in1k"),
    "vit_mediumd_patch16_rope_reg1_gap_256": row("rope_gap", MEDIUMD, "sbb_in1k", qkv_bias=False),
    # Meta's Perception Encoder (Bolya et al. 2025)
    "vit_pe_core_base_patch16_224": row("pe_core", BASE, "fb", num_classes=1024, rope_reference_grid=14),
    "vit_pe_core_gigantic_patch14_448": row("pe_core",
                                            dict(embed_dim=1536, depth=50, num_heads=16, mlp_ratio=5.833333333333333),
                                            "fb", img_size=448, patch_size=14, num_classes=1280, class_token=False,
                                            rope_offset=0.0, rope_reference_grid=32),
    "vit_pe_core_large_patch14_336": row("pe_core", LARGE, "fb", img_size=336, patch_size=14, num_classes=1024,
                                         rope_reference_grid=24),
    "vit_pe_core_small_patch16_384": row("pe_core", SMALL, "fb", img_size=384, num_classes=512, rope_reference_grid=24),
    "vit_pe_core_tiny_patch16_384": row("pe_core", TINY, "fb", img_size=384, num_classes=512, rope_reference_grid=24),
    "vit_pe_lang_gigantic_patch14_448": row("pe_spatial",
                                            dict(embed_dim=1536, depth=47, num_heads=16, mlp_ratio=5.833333333333333),
                                            "fb", img_size=448, patch_size=14, class_token=False, layer_scale=0.1,
                                            rope_offset=0.0),
    "vit_pe_lang_large_patch14_448": row("pe_spatial", dict(embed_dim=1024, depth=23, num_heads=16, mlp_ratio=4.0),
                                         "fb", img_size=448, patch_size=14, layer_scale=0.1),
    "vit_pe_spatial_base_patch16_512": row("pe_spatial", BASE, "fb", img_size=512),
    "vit_pe_spatial_gigantic_patch14_448": row("pe_spatial",
                                               dict(embed_dim=1536, depth=50, num_heads=16, mlp_ratio=5.833333333333333),
                                               "fb", img_size=448, patch_size=14, class_token=False, layer_scale=0.1,
                                               rope_offset=0.0),
    "vit_pe_spatial_large_patch14_448": row("pe_spatial", LARGE, "fb", img_size=448, patch_size=14),
    "vit_pe_spatial_small_patch16_512": row("pe_spatial", SMALL, "fb", img_size=512),
    "vit_pe_spatial_tiny_patch16_512": row("pe_spatial", TINY, "fb", img_size=512),
    # timm's relpos ViTs (vision_transformer_relpos): a relative position MLP in every block instead of the table
    "vit_relpos_small_patch16_224": row("relpos", SMALL, "sw_in1k"),
    "vit_relpos_medium_patch16_224": row("relpos", MEDIUM, "sw_in1k"),
    "vit_relpos_base_patch16_224": row("relpos", BASE, "sw_in1k"),
    "vit_relpos_base_patch16_plus_240": row("relpos", PLUS, None, img_size=240, qkv_bias=True, norm_after_pool=False),
    "vit_relpos_medium_patch16_cls_224": row("relpos", MEDIUM, "sw_in1k", relative_position_mlp=256, class_token=True,
                                             pool="token", norm_after_pool=False),
    "vit_relpos_base_patch16_cls_224": row("relpos", BASE, None, class_token=True, pool="token", norm_after_pool=False),
    "vit_relpos_base_patch16_clsgap_224": row("relpos", BASE, "sw_in1k", class_token=True),  # mean of the patches
    # ... with one MLP shared by every block (srelpos)
    "vit_srelpos_small_patch16_224": row("relpos", SMALL, "sw_in1k", relative_position_mlp=384,
                                         relative_position_shared=True, norm_after_pool=False),
    "vit_srelpos_medium_patch16_224": row("relpos", MEDIUM, "sw_in1k", relative_position_mlp=512,
                                          relative_position_shared=True, norm_after_pool=False),
    # ... with res-post-norm blocks (x + norm(f(x)); timm initialises those norms' weights small instead)
    "vit_relpos_small_patch16_rpn_224": row("relpos", SMALL, None, post_norm=True, layer_scale=None, norm_after_pool=False),
    "vit_relpos_medium_patch16_rpn_224": row("relpos", MEDIUM, "sw_in1k", post_norm=True, layer_scale=None,
                                             norm_after_pool=False),
    "vit_relpos_base_patch16_rpn_224": row("relpos", BASE, None, post_norm=True, layer_scale=None, norm_after_pool=False),
    "vit_relpos_base_patch32_plus_rpn_256": row("relpos", PLUS, "sw_in1k", img_size=256, patch_size=32, qkv_bias=True,
                                                post_norm=True, layer_scale=None, norm_after_pool=False),
    # Other blocks: ViT-22B's parallel block with q/k norms (no weights in timm), "Three things"' 2 branches
    "vit_base_patch16_xp_224": row("parallel_xp", BASE, None),
    "vit_large_patch14_xp_224": row("parallel_xp", LARGE, None, patch_size=14),
    "vit_huge_patch14_xp_224": row("parallel_xp", HUGE, None, patch_size=14),
    "vit_small_patch16_18x2_224": row("branched", dict(SMALL, depth=18), None),
    "vit_base_patch16_18x2_224": row("branched", dict(BASE, depth=18), None),
    # ... and timm's small GAP ViTs with them, or with differential attention (Ye et al. 2024)
    "vit_pwee_patch16_reg1_gap_256": row("reg_gap", dict(WEE, depth=16), "sbb_in1k", timm_keys=("parallel",),
                                         img_size=256, register_tokens=1, parallel=True),
    "vit_dwee_patch16_reg1_gap_256": row("reg_gap", WEE, "sbb_nadamuon_in1k", img_size=256, register_tokens=1,
                                         differential=True),
    "vit_dlittle_patch16_reg1_gap_256": row("reg_gap", LITTLE, "sbb_nadamuon_in1k", img_size=256, register_tokens=1,
                                            differential=True),
    "vit_dpwee_patch16_reg1_gap_256": row("reg_gap", dict(WEE, depth=16), "sbb_nadamuon_in1k",
                                          timm_keys=("parallel", "fused_out"), img_size=256, register_tokens=1,
                                          parallel=True, differential=True),
    # CaiT (Touvron et al. 2021): talking-heads blocks on the patches, then 2 class-attention blocks for the CLS token
    "cait_xxs24_224": row("cait", dict(embed_dim=192, depth=24, num_heads=4), "fb_dist_in1k", img_size=224),
    "cait_xxs24_384": row("cait", dict(embed_dim=192, depth=24, num_heads=4), "fb_dist_in1k"),
    "cait_xxs36_224": row("cait", dict(embed_dim=192, depth=36, num_heads=4), "fb_dist_in1k", img_size=224),
    "cait_xxs36_384": row("cait", dict(embed_dim=192, depth=36, num_heads=4), "fb_dist_in1k"),
    "cait_xs24_384": row("cait", dict(embed_dim=288, depth=24, num_heads=6), "fb_dist_in1k"),
    "cait_s24_224": row("cait", dict(embed_dim=384, depth=24, num_heads=8), "fb_dist_in1k", img_size=224),
    "cait_s24_384": row("cait", dict(embed_dim=384, depth=24, num_heads=8), "fb_dist_in1k"),
    "cait_s36_384": row("cait", dict(embed_dim=384, depth=36, num_heads=8), "fb_dist_in1k", layer_scale=1e-6),
    "cait_m36_384": row("cait", dict(embed_dim=768, depth=36, num_heads=16), "fb_dist_in1k", layer_scale=1e-6),
    "cait_m48_448": row("cait", dict(embed_dim=768, depth=48, num_heads=16), "fb_dist_in1k", img_size=448,
                        layer_scale=1e-6),
    # NaFlex (timm's NaFlexVit; SigLIP 2's NaFlex, Tschannen et al. 2025): any size and aspect in one batch
    "naflexvit_base_patch16_gap": row("naflex", BASE, "e300_s576_in1k"),
    "naflexvit_base_patch16_par_gap": row("naflex", BASE, "e300_s576_in1k", position_keeps_aspect=True),
    "naflexvit_base_patch16_parfac_gap": row("naflex", BASE, "e300_s576_in1k", position_keeps_aspect=True,
                                             factorized_positions=True),
    "naflexvit_base_patch16_map": row("naflex", BASE, None, pool="map", register_tokens=1, norm_after_pool=False),
    "naflexvit_so150m2_patch16_reg1_gap": row("naflex", SO150M2, None, register_tokens=1, qkv_bias=False),
    "naflexvit_so150m2_patch16_reg1_map": row("naflex", SO150M2, None, register_tokens=1, qkv_bias=False, pool="map",
                                              norm_after_pool=False),
    "naflexvit_base_patch16_siglip": row("naflex", BASE, "v2_webli", activation="gelu_tanh", pool="map",
                                         position_resize="bilinear_antialiased", layer_scale=None, register_tokens=0,
                                         norm_after_pool=False, num_classes=0),
    "naflexvit_so400m_patch16_siglip": row("naflex", SO400M, "v2_webli", activation="gelu_tanh", pool="map",
                                           position_resize="bilinear_antialiased", layer_scale=None, register_tokens=0,
                                           norm_after_pool=False, num_classes=0),
    # ... RADIO's (C-RADIOv3, v4): the CLS token's output, the table on a 128 x 128 grid
    "naflexvit_base_patch16_radio_v3": row("naflex_radio", BASE, "c_radio", layer_scale=1e-5,
                                           position_resize="bilinear_corners"),
    "naflexvit_large_patch16_radio_v3": row("naflex_radio", LARGE, "c_radio", layer_scale=1e-5),
    "naflexvit_huge_patch16_radio_v3": row("naflex_radio", HUGE, "c_radio", position_resize="bilinear_corners"),
    "naflexvit_giant_patch16_radio_v3": row("naflex_radio", GIANT2, "c_radio"),
    "naflexvit_so400m_patch16_radio_v4": row("naflex_radio", dict(SO400M, mlp_ratio=4304 / 1152), "c_radio",
                                             register_tokens=9),
    "naflexvit_huge_patch16_radio_v4": row("naflex_radio", HUGE, "c_radio", register_tokens=9),
    # The ViT paper's hybrids: a ResNet's feature map in place of the patches (R50+ViT-B/16 is its Table 2's)
    "vit_tiny_r_s16_p8_224": row("hybrid", TINY, "augreg_in21k_ft_in1k", timm_keys=("bit_stem_only",), patch_size=8),
    "vit_tiny_r_s16_p8_384": row("hybrid", TINY, "augreg_in21k_ft_in1k", timm_keys=("bit_stem_only",), patch_size=8,
                                 img_size=384),
    "vit_small_r26_s32_224": row("hybrid", SMALL, "augreg_in21k_ft_in1k", timm_keys=("bit",), stem_depths=(2, 2, 2, 2)),
    "vit_small_r26_s32_384": row("hybrid", SMALL, "augreg_in21k_ft_in1k", timm_keys=("bit",), stem_depths=(2, 2, 2, 2),
                                 img_size=384),
    "vit_base_r26_s32_224": row("hybrid", BASE, None, timm_keys=("bit",), stem_depths=(2, 2, 2, 2)),
    "vit_base_r50_s16_224": row("hybrid", BASE, "orig_in21k", timm_keys=("bit",), stem_depths=(3, 4, 9), num_classes=0),
    "vit_base_r50_s16_384": row("hybrid", BASE, "orig_in21k_ft_in1k", timm_keys=("bit",), stem_depths=(3, 4, 9),
                                img_size=384),
    "vit_large_r50_s32_224": row("hybrid", LARGE, "augreg_in21k_ft_in1k", timm_keys=("bit",),
                                 stem_depths=(3, 4, 6, 3)),
    "vit_large_r50_s32_384": row("hybrid", LARGE, "augreg_in21k_ft_in1k", timm_keys=("bit",),
                                 stem_depths=(3, 4, 6, 3), img_size=384),
    "vit_small_resnet26d_224": row("hybrid_d", dict(embed_dim=768, depth=8, num_heads=8), None,
                                   stem_depths=(2, 2, 2, 2)),
    "vit_small_resnet50d_s16_224": row("hybrid_d", dict(embed_dim=768, depth=8, num_heads=8), None,
                                       stem_depths=(3, 4, 6)),
    "vit_base_resnet26d_224": row("hybrid_d", BASE, None, stem_depths=(2, 2, 2, 2), mlp_ratio=4.0),
    "vit_base_resnet50d_224": row("hybrid_d", BASE, None, stem_depths=(3, 4, 6, 3), mlp_ratio=4.0),
    "vit_base_mci_224": row("hybrid", BASE, "apple/mobileclip_b_lt_timm", mean_std=ZERO_ONE, timm_keys=("mobileclip",),
                            stem="mobileclip", positions_cover_prefix=False, num_classes=512),
    # Segment Anything's image encoder (Kirillov et al. 2023): windowed blocks, 4 global ones, the neck
    "samvit_base_patch16": row("sam", BASE, "sa1b", global_blocks=(2, 5, 8, 11)),
    "samvit_large_patch16": row("sam", LARGE, "sa1b", global_blocks=(5, 11, 17, 23)),
    "samvit_huge_patch16": row("sam", HUGE, "sa1b", global_blocks=(7, 15, 23, 31)),
    "samvit_base_patch16_224": row("sam", BASE, None, img_size=224, global_blocks=(2, 5, 8, 11),
                                   absolute_positions=False, neck_channels=0, final_norm_eps=1e-6, num_classes=1000),
    # Meta's Sapiens2 (human-centric backbones, 2026): DINOv3's RoPE at 1024 x 768, grouped-query middle blocks
    "vit_base_patch16_sapiens2": row("sapiens2", BASE, "fb"),  # 12 blocks: all within 8 of an end, none grouped
    "vit_large_patch16_sapiens2": row("sapiens2", LARGE, "fb", kv_heads=8),
    "vit_huge_patch16_sapiens2": row("sapiens2", HUGE, "fb", kv_heads=8),
    "vit_giant_patch16_sapiens2": row("sapiens2", GIANT2, "fb", kv_heads=12),
    "vit_5b_patch16_sapiens2": row("sapiens2", dict(embed_dim=2432, depth=56, num_heads=32), "fb", kv_heads=16),
}


def _spec(name: str, entry: Row) -> ModelSpec:
    family = FAMILIES[entry.family]
    mean, std = entry.mean_std or family.mean_std
    weights = entry.tag
    if weights is not None and "/" not in weights:  # a whole hub id where timm keeps them elsewhere
        weights = f"timm/{name}.{weights}"
    return ModelSpec(entry.family, {**family.fields, **entry.size, **entry.fields}, weights, mean, std,
                     family.timm_keys + entry.timm_keys)


MODELS: dict[str, ModelSpec] = {name: _spec(name, entry) for name, entry in TABLE.items()}


def split_name(name: str) -> tuple[str, str | None]:
    """"vit_base_patch16_clip_224.openai" -> ("vit_base_patch16_clip_224", "openai"): timm's
    name.tag, where the tag picks one of the name's published weights."""
    architecture, _, tag = name.partition(".")
    return architecture, tag or None


def model_spec(name: str) -> ModelSpec:
    """The table's entry for a name (a tag after a dot is allowed and ignored here)."""
    architecture, _ = split_name(name)
    if architecture not in MODELS:
        close = [known for known in MODELS if known.startswith(architecture)] or get_close_matches(architecture, MODELS)
        hint = f"; similar: {', '.join(close[:5])}" if close else "; python -m vit lists them"
        raise ValueError(f"unknown model '{architecture}'{hint}")
    return MODELS[architecture]


def model_config(name: str, **overrides) -> ViTConfig:
    """The ViTConfig of a model name, with fields such as num_classes or img_size overridden."""
    return ViTConfig(**{**model_spec(name).config, **overrides})


def default_weights(name: str) -> str | None:
    """timm's hub id for a name: its default tag, or the tag the name carries ("name.tag"); None
    where timm publishes no weights for the name and no tag is given."""
    architecture, tag = split_name(name)
    weights = model_spec(architecture).weights  # "timm/<repo name>.<default tag>"
    if tag:
        return f"{weights.rsplit('.', 1)[0]}.{tag}" if weights else f"timm/{architecture}.{tag}"
    return weights
