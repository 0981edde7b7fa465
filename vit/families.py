"""The ViT family as data: every supported timm name is a size, a family and timm's default weights.

A family is a handful of `ViTConfig` fields (vit/model.py says what each one does):

    family      differs from the original ViT by                                  mean/std
    vit         -- (the original: CLS token, learned positions, exact GELU)        0.5
    deit        -- (same architecture, trained on ImageNet-1k alone)               ImageNet
    deit_dist   + a distillation token and its head, the two heads averaged       ImageNet
    deit3       positions for patches only, layer scale 1e-6                       ImageNet
    dinov2      patch 14, layer scale 1e-5, native 518 px, no classifier           ImageNet
    dinov2_reg  + 4 register tokens, positions for patches only                    ImageNet
    clip        LayerNorm before the blocks, no patch bias, LayerNorm eps 1e-5    OpenAI CLIP
    clip_quick  + QuickGELU (OpenAI's and MetaCLIP's weights)                      OpenAI CLIP
    siglip      no CLS token, attention-pooling head (MAP)                         0.5
    siglip_gap  no CLS token, mean of the patch tokens                             0.5
    gap         no CLS token, mean of the patch tokens (no qkv bias, layer scale)  0.5
    reg_gap     + registers; the final LayerNorm on the pooled vector              0.5

The mean/std above are each name's default; a hub download reads the tag's own from its
config.json (e.g. `vit_large_patch14_clip_224.openai` uses OpenAI's, its default tag 0.5).
"""

from dataclasses import dataclass
from difflib import get_close_matches

from vit.model import DEFAULT_MEAN, DEFAULT_STD, ViTConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = (DEFAULT_MEAN, DEFAULT_STD)

# Sizes: width, depth, heads (and the MLP's width where it is not 4x).
TINY = dict(embed_dim=192, depth=12, num_heads=3)
XSMALL = dict(embed_dim=256, depth=10, num_heads=4)
SMALL = dict(embed_dim=384, depth=12, num_heads=6)
MEDIUM = dict(embed_dim=512, depth=12, num_heads=8)
MEDIUMD = dict(embed_dim=512, depth=20, num_heads=8)
BETWIXT = dict(embed_dim=640, depth=12, num_heads=10)
BASE = dict(embed_dim=768, depth=12, num_heads=12)
LARGE = dict(embed_dim=1024, depth=24, num_heads=16)
HUGE = dict(embed_dim=1280, depth=32, num_heads=16)
GIANT = dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=4.3637)  # MLP 6144 (timm: 48/11)
GIGANTIC = dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.9231)  # MLP 8192 (timm: 64/13)
GIANTOPT = dict(embed_dim=1536, depth=40, num_heads=16)
PLUS = dict(embed_dim=896, depth=12, num_heads=14)
SO150M = dict(embed_dim=896, depth=18, num_heads=14, mlp_ratio=2.572)
SO400M = dict(embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362)
LITTLE = dict(embed_dim=320, depth=14, num_heads=5, mlp_ratio=5.6)
WEE = dict(embed_dim=256, depth=14, num_heads=4, mlp_ratio=5.0)

# Families: the ViTConfig fields that set each apart from the original, and its normalisation.
FAMILIES: dict[str, tuple[dict, tuple]] = {
    "vit": ({}, HALF),
    "deit": ({}, IMAGENET),
    "deit_dist": (dict(distillation_token=True), IMAGENET),
    "deit3": (dict(positions_cover_prefix=False, layer_scale=1e-6), IMAGENET),
    "dinov2": (dict(patch_size=14, img_size=518, layer_scale=1e-5, num_classes=0), IMAGENET),
    "dinov2_reg": (dict(patch_size=14, img_size=518, layer_scale=1e-5, num_classes=0, register_tokens=4,
                        positions_cover_prefix=False), IMAGENET),
    "clip": (dict(norm_before_blocks=True, patch_bias=False, layer_norm_eps=1e-5), OPENAI_CLIP),
    "clip_quick": (dict(norm_before_blocks=True, patch_bias=False, layer_norm_eps=1e-5, activation="quick_gelu"),
                   OPENAI_CLIP),
    "siglip": (dict(class_token=False, pool="map", num_classes=0), HALF),
    "siglip_gap": (dict(class_token=False, pool="avg", num_classes=0), HALF),
    "gap": (dict(class_token=False, pool="avg", qkv_bias=False, layer_scale=1e-6), HALF),
    "reg_gap": (dict(class_token=False, pool="avg", register_tokens=4, positions_cover_prefix=False,
                     layer_scale=1e-5, norm_after_pool=True), HALF),
}


@dataclass(frozen=True)
class ModelSpec:
    """One timm name: its family, its configuration, timm's default weights for it."""

    family: str
    config: dict  # ViTConfig fields
    weights: str  # timm's default hub id
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# name: (family, size, timm's default tag (or hub id)[, what else differs: patch size, native image size, ...][, mean/std])
TABLE: dict[str, tuple] = {
    # The original ViT, timm's AugReg weights (ImageNet-21k, then 1k)
    "vit_tiny_patch16_224": ("vit", TINY, "augreg_in21k_ft_in1k"),
    "vit_small_patch16_224": ("vit", SMALL, "augreg_in21k_ft_in1k"),
    "vit_base_patch16_224": ("vit", BASE, "augreg2_in21k_ft_in1k"),
    "vit_base_patch32_224": ("vit", BASE, "augreg_in21k_ft_in1k", dict(patch_size=32)),
    "vit_large_patch16_224": ("vit", LARGE, "augreg_in21k_ft_in1k"),
    # DeiT (Touvron et al. 2021): ImageNet-1k only; the distilled ones learn from a CNN teacher
    "deit_tiny_patch16_224": ("deit", TINY, "fb_in1k"),
    "deit_small_patch16_224": ("deit", SMALL, "fb_in1k"),
    "deit_base_patch16_224": ("deit", BASE, "fb_in1k"),
    "deit_base_patch16_384": ("deit", BASE, "fb_in1k", dict(img_size=384)),
    "deit_tiny_distilled_patch16_224": ("deit_dist", TINY, "fb_in1k"),
    "deit_small_distilled_patch16_224": ("deit_dist", SMALL, "fb_in1k"),
    "deit_base_distilled_patch16_224": ("deit_dist", BASE, "fb_in1k"),
    "deit_base_distilled_patch16_384": ("deit_dist", BASE, "fb_in1k", dict(img_size=384)),
    # DeiT-III (Touvron et al. 2022)
    "deit3_small_patch16_224": ("deit3", SMALL, "fb_in1k"),
    "deit3_medium_patch16_224": ("deit3", MEDIUM, "fb_in1k"),
    "deit3_base_patch16_224": ("deit3", BASE, "fb_in1k"),
    "deit3_large_patch16_224": ("deit3", LARGE, "fb_in1k"),
    "deit3_huge_patch14_224": ("deit3", HUGE, "fb_in1k", dict(patch_size=14)),
    "deit3_small_patch16_384": ("deit3", SMALL, "fb_in1k", dict(img_size=384)),
    "deit3_base_patch16_384": ("deit3", BASE, "fb_in1k", dict(img_size=384)),
    "deit3_large_patch16_384": ("deit3", LARGE, "fb_in1k", dict(img_size=384)),
    # DINOv2 (Oquab et al. 2023), and with registers (Darcet et al. 2023): self-supervised backbones
    "vit_small_patch14_dinov2": ("dinov2", SMALL, "lvd142m"),
    "vit_base_patch14_dinov2": ("dinov2", BASE, "lvd142m"),
    "vit_large_patch14_dinov2": ("dinov2", LARGE, "lvd142m"),
    "vit_small_patch14_reg4_dinov2": ("dinov2_reg", SMALL, "lvd142m"),
    "vit_base_patch14_reg4_dinov2": ("dinov2_reg", BASE, "lvd142m"),
    "vit_large_patch14_reg4_dinov2": ("dinov2_reg", LARGE, "lvd142m"),
    # CLIP image towers (Radford et al. 2021; OpenCLIP, DFN, MetaCLIP weights)
    "vit_base_patch32_clip_224": ("clip", BASE, "laion2b_ft_in12k_in1k", dict(patch_size=32)),
    "vit_base_patch16_clip_224": ("clip", BASE, "laion2b_ft_in12k_in1k"),
    "vit_large_patch14_clip_224": ("clip", LARGE, "laion2b_ft_in12k_in1k", dict(patch_size=14), HALF),
    "vit_huge_patch14_clip_224": ("clip", HUGE, "laion2b_ft_in12k_in1k", dict(patch_size=14)),
    "vit_medium_patch16_clip_224": ("clip", MEDIUM, "tinyclip_yfcc15m", dict(num_classes=512)),
    "vit_xsmall_patch16_clip_224": ("clip", XSMALL, "tinyclip_yfcc15m", dict(num_classes=512)),
    "vit_base_patch16_clip_384": ("clip", BASE, "laion2b_ft_in12k_in1k", dict(img_size=384)),
    "vit_large_patch14_clip_336": ("clip", LARGE, "laion2b_ft_in12k_in1k", dict(patch_size=14, img_size=336), HALF),
    "vit_base_patch32_clip_256": ("clip", BASE, "datacompxl", dict(patch_size=32, img_size=256, num_classes=512)),
    "vit_base_patch32_clip_384": ("clip", BASE, "laion2b_ft_in12k_in1k", dict(patch_size=32, img_size=384)),
    "vit_base_patch32_clip_448": ("clip", BASE, "laion2b_ft_in12k_in1k", dict(patch_size=32, img_size=448)),
    "vit_medium_patch32_clip_224": ("clip", MEDIUM, "tinyclip_laion400m", dict(patch_size=32, num_classes=512)),
    "vit_betwixt_patch32_clip_224": ("clip", BETWIXT, "tinyclip_laion400m", dict(patch_size=32, num_classes=512)),
    "vit_base_patch16_plus_clip_240": ("clip", PLUS, "laion400m_e32", dict(img_size=240, num_classes=640)),
    "vit_huge_patch14_clip_336": ("clip", HUGE, "laion2b_ft_in12k_in1k", dict(patch_size=14, img_size=336)),
    "vit_huge_patch14_clip_378": ("clip", HUGE, "dfn5b", dict(patch_size=14, img_size=378, num_classes=1024)),
    "vit_giant_patch14_clip_224": ("clip", GIANT, "laion2b", dict(patch_size=14, num_classes=1024)),
    "vit_gigantic_patch14_clip_224": ("clip", GIGANTIC, "laion2b", dict(patch_size=14, num_classes=1280)),
    "vit_gigantic_patch14_clip_378": ("clip", GIGANTIC, "metaclip2_worldwide",
                                      dict(patch_size=14, img_size=378, num_classes=1280)),
    # (QuickGELU names: timm keeps their weights under the plain CLIP name's hub repos)
    "vit_base_patch32_clip_quickgelu_224": ("clip_quick", BASE, "timm/vit_base_patch32_clip_224.laion400m_e32",
                                            dict(patch_size=32, num_classes=512)),
    "vit_base_patch16_clip_quickgelu_224": ("clip_quick", BASE, "timm/vit_base_patch16_clip_224.metaclip_2pt5b",
                                            dict(num_classes=512)),
    "vit_large_patch14_clip_quickgelu_224": ("clip_quick", LARGE, "timm/vit_large_patch14_clip_224.dfn2b",
                                             dict(patch_size=14, num_classes=768)),
    "vit_huge_patch14_clip_quickgelu_224": ("clip_quick", HUGE, "timm/vit_huge_patch14_clip_224.dfn5b",
                                            dict(patch_size=14, num_classes=1024)),
    "vit_large_patch14_clip_quickgelu_336": ("clip_quick", LARGE, "timm/vit_large_patch14_clip_336.openai",
                                             dict(patch_size=14, img_size=336, num_classes=768)),
    "vit_huge_patch14_clip_quickgelu_378": ("clip_quick", HUGE, "timm/vit_huge_patch14_clip_378.dfn5b",
                                            dict(patch_size=14, img_size=378, num_classes=1024)),
    "vit_gigantic_patch14_clip_quickgelu_224": ("clip_quick", GIGANTIC, "timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b",
                                                dict(patch_size=14, num_classes=1280)),
    # SigLIP image towers (Zhai et al. 2023; SigLIP 2): attention-pooling head, or its GAP variant
    "vit_base_patch16_siglip_224": ("siglip", BASE, "v2_webli"),
    "vit_base_patch16_siglip_256": ("siglip", BASE, "v2_webli", dict(img_size=256)),
    "vit_base_patch16_siglip_384": ("siglip", BASE, "v2_webli", dict(img_size=384)),
    "vit_base_patch16_siglip_512": ("siglip", BASE, "v2_webli", dict(img_size=512)),
    "vit_base_patch32_siglip_256": ("siglip", BASE, "v2_webli", dict(patch_size=32, img_size=256,
                                                                      activation="gelu_tanh")),
    "vit_large_patch16_siglip_256": ("siglip", LARGE, "v2_webli", dict(img_size=256)),
    "vit_large_patch16_siglip_384": ("siglip", LARGE, "v2_webli", dict(img_size=384)),
    "vit_so400m_patch14_siglip_224": ("siglip", SO400M, "v2_webli", dict(patch_size=14)),
    "vit_so400m_patch14_siglip_378": ("siglip", SO400M, "v2_webli", dict(patch_size=14, img_size=378)),
    "vit_so400m_patch14_siglip_384": ("siglip", SO400M, "webli", dict(patch_size=14, img_size=384)),  # 27 patches + 6 px
    "vit_so400m_patch16_siglip_256": ("siglip", SO400M, "v2_webli", dict(img_size=256, activation="gelu_tanh")),
    "vit_large_patch16_siglip_512": ("siglip", LARGE, "v2_webli", dict(img_size=512, activation="gelu_tanh")),
    "vit_so400m_patch16_siglip_384": ("siglip", SO400M, "v2_webli", dict(img_size=384, activation="gelu_tanh")),
    "vit_so400m_patch16_siglip_512": ("siglip", SO400M, "v2_webli", dict(img_size=512, activation="gelu_tanh")),
    "vit_giantopt_patch16_siglip_256": ("siglip", GIANTOPT, "v2_webli", dict(img_size=256, activation="gelu_tanh")),
    "vit_base_patch16_siglip_gap_224": ("siglip_gap", BASE, "v2_webli"),
    "vit_base_patch16_siglip_gap_256": ("siglip_gap", BASE, "v2_webli", dict(img_size=256)),
    "vit_base_patch16_siglip_gap_384": ("siglip_gap", BASE, "v2_webli", dict(img_size=384)),
    "vit_base_patch16_siglip_gap_512": ("siglip_gap", BASE, "v2_webli", dict(img_size=512)),
    "vit_base_patch32_siglip_gap_256": ("siglip_gap", BASE, "v2_webli", dict(patch_size=32, img_size=256,
                                                                              activation="gelu_tanh")),
    "vit_large_patch16_siglip_gap_256": ("siglip_gap", LARGE, "v2_webli", dict(img_size=256)),
    "vit_large_patch16_siglip_gap_384": ("siglip_gap", LARGE, "v2_webli", dict(img_size=384)),
    "vit_large_patch16_siglip_gap_512": ("siglip_gap", LARGE, "v2_webli", dict(img_size=512, activation="gelu_tanh")),
    "vit_so400m_patch14_siglip_gap_224": ("siglip_gap", SO400M, "v2_webli", dict(patch_size=14)),
    "vit_so400m_patch14_siglip_gap_378": ("siglip_gap", SO400M, "v2_webli", dict(patch_size=14, img_size=378)),
    "vit_so400m_patch14_siglip_gap_384": ("siglip_gap", SO400M, "webli", dict(patch_size=14, img_size=384)),
    "vit_so400m_patch14_siglip_gap_448": ("siglip_gap", SO400M, "pali_mix", dict(patch_size=14, img_size=448)),
    "vit_so400m_patch14_siglip_gap_896": ("siglip_gap", SO400M, "pali_pt", dict(patch_size=14, img_size=896)),
    "vit_so400m_patch16_siglip_gap_256": ("siglip_gap", SO400M, "v2_webli", dict(img_size=256, activation="gelu_tanh")),
    "vit_so400m_patch16_siglip_gap_384": ("siglip_gap", SO400M, "v2_webli", dict(img_size=384, activation="gelu_tanh")),
    "vit_so400m_patch16_siglip_gap_512": ("siglip_gap", SO400M, "v2_webli", dict(img_size=512, activation="gelu_tanh")),
    # Global-average-pool ViTs (timm's own training recipes)
    "vit_medium_patch16_gap_240": ("gap", MEDIUM, "sw_in12k", dict(img_size=240, num_classes=11821)),
    "vit_medium_patch16_gap_256": ("gap", MEDIUM, "sw_in12k_ft_in1k", dict(img_size=256)),
    "vit_medium_patch16_gap_384": ("gap", MEDIUM, "sw_in12k_ft_in1k", dict(img_size=384)),
    "vit_medium_patch16_reg4_gap_256": ("reg_gap", MEDIUM, "sbb_in12k_ft_in1k", dict(img_size=256)),
    "vit_mediumd_patch16_reg4_gap_256": ("reg_gap", MEDIUMD, "sbb2_e200_in12k_ft_in1k", dict(img_size=256)),
    "vit_mediumd_patch16_reg4_gap_384": ("reg_gap", MEDIUMD, "sbb2_e200_in12k_ft_in1k", dict(img_size=384)),
    "vit_betwixt_patch16_reg4_gap_256": ("reg_gap", BETWIXT, "sbb2_e200_in12k_ft_in1k", dict(img_size=256)),
    "vit_betwixt_patch16_reg4_gap_384": ("reg_gap", BETWIXT, "sbb2_e200_in12k_ft_in1k", dict(img_size=384)),
    "vit_little_patch16_reg4_gap_256": ("reg_gap", LITTLE, "sbb_in1k", dict(img_size=256)),
    "vit_medium_patch16_reg1_gap_256": ("reg_gap", MEDIUM, "sbb_in1k", dict(img_size=256, register_tokens=1)),
    "vit_betwixt_patch16_reg1_gap_256": ("reg_gap", BETWIXT, "sbb_in1k", dict(img_size=256, register_tokens=1)),
    "vit_little_patch16_reg1_gap_256": ("reg_gap", LITTLE, "sbb_in12k_ft_in1k", dict(img_size=256, register_tokens=1)),
    "vit_wee_patch16_reg1_gap_256": ("reg_gap", WEE, "sbb_in1k", dict(img_size=256, register_tokens=1)),
    "vit_so150m_patch16_reg4_gap_256": ("reg_gap", SO150M, "sbb_e250_in12k_ft_in1k",
                                        dict(img_size=256, positions_cover_prefix=True, layer_scale=None,
                                             norm_after_pool=False)),
}


def _spec(name: str, family: str, size: dict, tag: str, fields: dict | None = None, norm: tuple | None = None) -> ModelSpec:
    changes, family_norm = FAMILIES[family]
    mean, std = norm or family_norm
    weights = tag if "/" in tag else f"timm/{name}.{tag}"  # a whole hub id where timm keeps them elsewhere
    return ModelSpec(family, {**changes, **size, **(fields or {})}, weights, mean, std)


MODELS: dict[str, ModelSpec] = {name: _spec(name, *row) for name, row in TABLE.items()}


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


def default_weights(name: str) -> str:
    """timm's hub id for a name: its default tag, or the tag the name carries ("name.tag")."""
    architecture, tag = split_name(name)
    weights = model_spec(architecture).weights  # "timm/<repo name>.<default tag>"
    return f"{weights.rsplit('.', 1)[0]}.{tag}" if tag else weights
