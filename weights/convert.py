"""timm's key maps, and the renaming every layout's conversion uses (weights/layouts.py has the others).

Our names (vit/model.py) say what each tensor is; timm's (and torchvision's, OpenCLIP's, ...)
name the same tensors differently. The tables are the whole story: read them to see which
tensor goes where; one table serves both ways (from_ours reads it backwards, for export).
`{i}` stands for the block index, `{j}` for a branch within a block (timm's 18x2). A key
ending in a bracket names one part of a fused tensor: "qkv.weight[k]" is the key rows of our qkv
projection, "in_proj.weight[mlp]" the MLP rows of timm's parallel block's input projection.
"""

import re

import torch

# timm's VisionTransformer (the keys of timm's hub `model.safetensors`) -> ours. One to one.
TIMM_TO_OURS: dict[str, str] = {
    "patch_embed.proj.weight": "patch_embedding.projection.weight",  # (D, C, P, P)
    "patch_embed.proj.bias": "patch_embedding.projection.bias",
    "cls_token": "cls_token",  # (1, 1, D)
    "pos_embed": "position_embedding",  # (1, 1+N, D)
    "blocks.{i}.norm1.weight": "blocks.{i}.attention_norm.weight",
    "blocks.{i}.norm1.bias": "blocks.{i}.attention_norm.bias",
    "blocks.{i}.attn.qkv.weight": "blocks.{i}.attention.qkv.weight",  # (3D, D): q, k, v stacked
    "blocks.{i}.attn.qkv.bias": "blocks.{i}.attention.qkv.bias",
    "blocks.{i}.attn.proj.weight": "blocks.{i}.attention.out_proj.weight",
    "blocks.{i}.attn.proj.bias": "blocks.{i}.attention.out_proj.bias",
    "blocks.{i}.norm2.weight": "blocks.{i}.mlp_norm.weight",
    "blocks.{i}.norm2.bias": "blocks.{i}.mlp_norm.bias",
    "blocks.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",  # (4D, D)
    "blocks.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
    "blocks.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",  # (D, 4D)
    "blocks.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
    "norm.weight": "final_norm.weight",  # timm calls it fc_norm when it follows the pooling (see below)
    "norm.bias": "final_norm.bias",
    "head.weight": "head.weight",  # (num_classes, D)
    "head.bias": "head.bias",
    # The family's extra tensors (vit/families.py), present only in the models that use them.
    "dist_token": "distillation_token",  # (1, 1, D)          DeiT distilled
    "head_dist.weight": "head_distillation.weight",  # its classifier
    "head_dist.bias": "head_distillation.bias",
    "reg_token": "register_tokens",  # (1, R, D)              DINOv2 reg4, *_reg*_gap
    "blocks.{i}.ls1.gamma": "blocks.{i}.attention_scale.gamma",  # (D,)   DeiT-III, DINOv2
    "blocks.{i}.ls2.gamma": "blocks.{i}.mlp_scale.gamma",
    "norm_pre.weight": "norm_before_blocks.weight",  # CLIP
    "norm_pre.bias": "norm_before_blocks.bias",
    "attn_pool.latent": "attention_pool.query",  # (1, 1, D)    SigLIP's attention-pooling head
    "attn_pool.q.weight": "attention_pool.q.weight",
    "attn_pool.q.bias": "attention_pool.q.bias",
    "attn_pool.kv.weight": "attention_pool.kv.weight",  # (2D, D): keys and values stacked
    "attn_pool.kv.bias": "attention_pool.kv.bias",
    "attn_pool.proj.weight": "attention_pool.out_proj.weight",
    "attn_pool.proj.bias": "attention_pool.out_proj.bias",
    "attn_pool.norm.weight": "attention_pool.mlp_norm.weight",
    "attn_pool.norm.bias": "attention_pool.mlp_norm.bias",
    "attn_pool.mlp.fc1.weight": "attention_pool.mlp.fc1.weight",
    "attn_pool.mlp.fc1.bias": "attention_pool.mlp.fc1.bias",
    "attn_pool.mlp.fc2.weight": "attention_pool.mlp.fc2.weight",
    "attn_pool.mlp.fc2.bias": "attention_pool.mlp.fc2.bias",
    # The modern family (timm's eva.py and beit.py name some tensors their own way).
    "patch_embed.norm.weight": "norm_after_patches.weight",  # AIMv2 (RMSNorm: a weight, no bias)
    "rope.freqs": "rope.freqs",  # (2, depth, heads, head_dim / 2)   RoPE-ViT mixed: learned frequencies
    "blocks.{i}.attn.q_bias": "blocks.{i}.attention.q_bias",  # BEiT, EVA, DINOv3: biases for q and v only
    "blocks.{i}.attn.v_bias": "blocks.{i}.attention.v_bias",
    "blocks.{i}.attn.relative_position_bias_table": "blocks.{i}.attention.relative_bias.table",  # BEiT
    "blocks.{i}.attn.rel_pos.mlp.fc1.weight": "blocks.{i}.attention.relative_bias.mlp.fc1.weight",  # relpos ViTs:
    "blocks.{i}.attn.rel_pos.mlp.fc1.bias": "blocks.{i}.attention.relative_bias.mlp.fc1.bias",  # the offsets' MLP
    "blocks.{i}.attn.rel_pos.mlp.fc2.weight": "blocks.{i}.attention.relative_bias.mlp.fc2.weight",
    "blocks.{i}.attn.rel_pos.mlp.fc2.bias": "blocks.{i}.attention.relative_bias.mlp.fc2.bias",
    "shared_rel_pos.mlp.fc1.weight": "shared_relative_bias.mlp.fc1.weight",  # srelpos: one MLP for all blocks
    "shared_rel_pos.mlp.fc1.bias": "shared_relative_bias.mlp.fc1.bias",
    "shared_rel_pos.mlp.fc2.weight": "shared_relative_bias.mlp.fc2.weight",
    "shared_rel_pos.mlp.fc2.bias": "shared_relative_bias.mlp.fc2.bias",
    "blocks.{i}.attn.norm.weight": "blocks.{i}.attention.inner_norm.weight",  # EVA-02 CLIP
    "blocks.{i}.attn.norm.bias": "blocks.{i}.attention.inner_norm.bias",
    "blocks.{i}.mlp.norm.weight": "blocks.{i}.mlp.inner_norm.weight",  # EVA-02's SwiGLU
    "blocks.{i}.mlp.norm.bias": "blocks.{i}.mlp.inner_norm.bias",
    # Other blocks: norms on q and k (Sapiens2), differential attention's lambdas and norm (dwee, dlittle)
    "blocks.{i}.attn.q_norm.weight": "blocks.{i}.attention.q_norm.weight",  # (head_dim,)
    "blocks.{i}.attn.q_norm.bias": "blocks.{i}.attention.q_norm.bias",
    "blocks.{i}.attn.k_norm.weight": "blocks.{i}.attention.k_norm.weight",
    "blocks.{i}.attn.k_norm.bias": "blocks.{i}.attention.k_norm.bias",
    "blocks.{i}.attn.lambda_q1": "blocks.{i}.attention.differential.lambda_q1",  # (head_dim / 2,)
    "blocks.{i}.attn.lambda_k1": "blocks.{i}.attention.differential.lambda_k1",
    "blocks.{i}.attn.lambda_q2": "blocks.{i}.attention.differential.lambda_q2",
    "blocks.{i}.attn.lambda_k2": "blocks.{i}.attention.differential.lambda_k2",
    "blocks.{i}.attn.sub_norm.weight": "blocks.{i}.attention.differential.norm.weight",
    # CaiT: talking heads' mixing of the heads, and the class-attention blocks after the patch blocks
    "blocks.{i}.attn.proj_l.weight": "blocks.{i}.attention.softmax_attention.mix_logits.weight",  # (H, H)
    "blocks.{i}.attn.proj_l.bias": "blocks.{i}.attention.softmax_attention.mix_logits.bias",
    "blocks.{i}.attn.proj_w.weight": "blocks.{i}.attention.softmax_attention.mix_weights.weight",
    "blocks.{i}.attn.proj_w.bias": "blocks.{i}.attention.softmax_attention.mix_weights.bias",
    **{f"blocks_token_only.{{i}}.{theirs}": f"class_attention.blocks.{{i}}.{ours}" for theirs, ours in (
        ("norm1.weight", "attention_norm.weight"), ("norm1.bias", "attention_norm.bias"),
        ("attn.q.weight", "attention.q.weight"), ("attn.q.bias", "attention.q.bias"),
        ("attn.k.weight", "attention.k.weight"), ("attn.k.bias", "attention.k.bias"),
        ("attn.v.weight", "attention.v.weight"), ("attn.v.bias", "attention.v.bias"),
        ("attn.proj.weight", "attention.out_proj.weight"), ("attn.proj.bias", "attention.out_proj.bias"),
        ("norm2.weight", "mlp_norm.weight"), ("norm2.bias", "mlp_norm.bias"),
        ("mlp.fc1.weight", "mlp.fc1.weight"), ("mlp.fc1.bias", "mlp.fc1.bias"),
        ("mlp.fc2.weight", "mlp.fc2.weight"), ("mlp.fc2.bias", "mlp.fc2.bias"),
        ("gamma_1", "attention_scale.gamma"), ("gamma_2", "mlp_scale.gamma"))},
    # timm's 18x2: each block holds 2 attentions (attns.{j}) and 2 MLPs (ffns.{j}); ours, 2 branches
    "blocks.{i}.attns.{j}.norm.weight": "blocks.{i}.branches.{j}.attention_norm.weight",
    "blocks.{i}.attns.{j}.norm.bias": "blocks.{i}.branches.{j}.attention_norm.bias",
    "blocks.{i}.attns.{j}.attn.qkv.weight": "blocks.{i}.branches.{j}.attention.qkv.weight",
    "blocks.{i}.attns.{j}.attn.qkv.bias": "blocks.{i}.branches.{j}.attention.qkv.bias",
    "blocks.{i}.attns.{j}.attn.proj.weight": "blocks.{i}.branches.{j}.attention.out_proj.weight",
    "blocks.{i}.attns.{j}.attn.proj.bias": "blocks.{i}.branches.{j}.attention.out_proj.bias",
    "blocks.{i}.attns.{j}.ls.gamma": "blocks.{i}.branches.{j}.attention_scale.gamma",
    "blocks.{i}.ffns.{j}.norm.weight": "blocks.{i}.branches.{j}.mlp_norm.weight",
    "blocks.{i}.ffns.{j}.norm.bias": "blocks.{i}.branches.{j}.mlp_norm.bias",
    "blocks.{i}.ffns.{j}.mlp.fc1.weight": "blocks.{i}.branches.{j}.mlp.fc1.weight",
    "blocks.{i}.ffns.{j}.mlp.fc1.bias": "blocks.{i}.branches.{j}.mlp.fc1.bias",
    "blocks.{i}.ffns.{j}.mlp.fc2.weight": "blocks.{i}.branches.{j}.mlp.fc2.weight",
    "blocks.{i}.ffns.{j}.mlp.fc2.bias": "blocks.{i}.branches.{j}.mlp.fc2.bias",
    "blocks.{i}.ffns.{j}.ls.gamma": "blocks.{i}.branches.{j}.mlp_scale.gamma",
}
# Where timm's files spell some tensors another way (vit/families.py's `timm_keys`, per name): its
# eva.py and beit.py name layer scale gamma_1/gamma_2; EVA-02 keeps q, k and v projections apart
# (k without bias), Sapiens2 too (k with bias); a SwiGLU keeps the gate and value halves of fc1
# apart; ViT-22B's parallel block makes the MLP's hidden layer and q, k, v in one matmul (in_proj),
# and its differential twin projects [attention; MLP] back with one (out_proj).
TIMM_SPELLINGS: dict[str, dict[str, str]] = {
    "gamma": {
        "blocks.{i}.gamma_1": "blocks.{i}.attention_scale.gamma",
        "blocks.{i}.gamma_2": "blocks.{i}.mlp_scale.gamma",
    },
    "qkv": {
        "blocks.{i}.attn.q_proj.weight": "blocks.{i}.attention.qkv.weight[q]",
        "blocks.{i}.attn.k_proj.weight": "blocks.{i}.attention.qkv.weight[k]",
        "blocks.{i}.attn.v_proj.weight": "blocks.{i}.attention.qkv.weight[v]",
        "blocks.{i}.attn.q_proj.bias": "blocks.{i}.attention.q_bias",
        "blocks.{i}.attn.v_proj.bias": "blocks.{i}.attention.v_bias",
    },
    "qkv_biased": {  # Sapiens2 (grouped-query blocks: fewer k and v rows)
        "blocks.{i}.attn.q_proj.weight": "blocks.{i}.attention.qkv.weight[q]",
        "blocks.{i}.attn.k_proj.weight": "blocks.{i}.attention.qkv.weight[k]",
        "blocks.{i}.attn.v_proj.weight": "blocks.{i}.attention.qkv.weight[v]",
        "blocks.{i}.attn.q_proj.bias": "blocks.{i}.attention.qkv.bias[q]",
        "blocks.{i}.attn.k_proj.bias": "blocks.{i}.attention.qkv.bias[k]",
        "blocks.{i}.attn.v_proj.bias": "blocks.{i}.attention.qkv.bias[v]",
    },
    "swiglu": {
        "blocks.{i}.mlp.fc1_g.weight": "blocks.{i}.mlp.fc1.weight[g]",  # rows [gate; value] of our fc1
        "blocks.{i}.mlp.fc1_x.weight": "blocks.{i}.mlp.fc1.weight[x]",
        "blocks.{i}.mlp.fc1_g.bias": "blocks.{i}.mlp.fc1.bias[g]",
        "blocks.{i}.mlp.fc1_x.bias": "blocks.{i}.mlp.fc1.bias[x]",
    },
    "parallel": {  # one norm, one input projection: rows [MLP hidden; q; k; v]
        "blocks.{i}.in_norm.weight": "blocks.{i}.attention_norm.weight",
        "blocks.{i}.in_norm.bias": "blocks.{i}.attention_norm.bias",
        "blocks.{i}.in_proj.weight[mlp]": "blocks.{i}.mlp.fc1.weight",
        "blocks.{i}.in_proj.weight[qkv]": "blocks.{i}.attention.qkv.weight",
        "blocks.{i}.in_proj.bias[mlp]": "blocks.{i}.mlp.fc1.bias",  # when q, k, v have biases ...
        "blocks.{i}.in_proj.bias[qkv]": "blocks.{i}.attention.qkv.bias",
        "blocks.{i}.mlp_bias": "blocks.{i}.mlp.fc1.bias",  # ... else the MLP's bias stands alone
        "blocks.{i}.q_norm.weight": "blocks.{i}.attention.q_norm.weight",
        "blocks.{i}.q_norm.bias": "blocks.{i}.attention.q_norm.bias",
        "blocks.{i}.k_norm.weight": "blocks.{i}.attention.k_norm.weight",
        "blocks.{i}.k_norm.bias": "blocks.{i}.attention.k_norm.bias",
        "blocks.{i}.attn_out_proj.weight": "blocks.{i}.attention.out_proj.weight",
        "blocks.{i}.attn_out_proj.bias": "blocks.{i}.attention.out_proj.bias",
        "blocks.{i}.mlp_out_proj.weight": "blocks.{i}.mlp.fc2.weight",
        "blocks.{i}.mlp_out_proj.bias": "blocks.{i}.mlp.fc2.bias",
        "blocks.{i}.ls.gamma": "blocks.{i}.attention_scale.gamma",
        "blocks.{i}.lambda_q1": "blocks.{i}.attention.differential.lambda_q1",  # differential (dpwee)
        "blocks.{i}.lambda_k1": "blocks.{i}.attention.differential.lambda_k1",
        "blocks.{i}.lambda_q2": "blocks.{i}.attention.differential.lambda_q2",
        "blocks.{i}.lambda_k2": "blocks.{i}.attention.differential.lambda_k2",
        "blocks.{i}.sub_norm.weight": "blocks.{i}.attention.differential.norm.weight",
    },
    "sam": {  # SAM: the neck in place of the final norm, decomposed relative positions, the head's fc
        "neck.0.weight": "final_norm.reduce.weight",  # (C', D, 1, 1)
        "neck.1.weight": "final_norm.reduce_norm.weight",
        "neck.1.bias": "final_norm.reduce_norm.bias",
        "neck.2.weight": "final_norm.mix.weight",  # (C', C', 3, 3)
        "neck.3.weight": "final_norm.mix_norm.weight",
        "neck.3.bias": "final_norm.mix_norm.bias",
        "neck.weight": "final_norm.weight",  # samvit_base_patch16_224: the neck is one LayerNorm2d
        "neck.bias": "final_norm.bias",
        "blocks.{i}.attn.rel_pos_h": "blocks.{i}.attention.relative_positions.rows",  # (2R-1, head_dim)
        "blocks.{i}.attn.rel_pos_w": "blocks.{i}.attention.relative_positions.columns",  # (2C-1, head_dim)
        "head.fc.weight": "head.weight",
        "head.fc.bias": "head.bias",
    },
    "fused_out": {  # dpwee: one output projection, columns [attention; MLP], its bias the attention's
        "blocks.{i}.out_proj.weight[attn]": "blocks.{i}.attention.out_proj.weight",
        "blocks.{i}.out_proj.weight[mlp]": "blocks.{i}.mlp.fc2.weight",
        "blocks.{i}.out_proj.bias": "blocks.{i}.attention.out_proj.bias",
    },
}
# The hybrids' stems (vit/layers/stems.py): timm keeps them under patch_embed.backbone, with its ResNets'
# own names; one spelling per kind of stem.
_BOTTLENECK = ("conv1.weight", "conv2.weight", "conv3.weight") + tuple(
    f"norm{n}.{p}" for n in (1, 2, 3) for p in ("weight", "bias"))
_BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STEM = "patch_embedding.stem"
TIMM_SPELLINGS["bit"] = {  # ResNetV2 (BiT): stem.conv, stem.norm, stages.{i}.blocks.{j}
    "patch_embed.backbone.stem.conv.weight": f"{_STEM}.conv.weight",
    "patch_embed.backbone.stem.norm.weight": f"{_STEM}.norm.weight",
    "patch_embed.backbone.stem.norm.bias": f"{_STEM}.norm.bias",
    **{f"patch_embed.backbone.stages.{{i}}.blocks.{{j}}.{key}": f"{_STEM}.stages.{{i}}.{{j}}.{key}" for key in _BOTTLENECK},
    **{f"patch_embed.backbone.stages.{{i}}.blocks.{{j}}.downsample.{key}": f"{_STEM}.stages.{{i}}.{{j}}.downsample.{key}"
       for key in ("conv.weight", "norm.weight", "norm.bias")},
}
TIMM_SPELLINGS["bit_stem_only"] = {  # no stages: timm's backbone is the stem itself
    "patch_embed.backbone.conv.weight": f"{_STEM}.conv.weight",
    "patch_embed.backbone.norm.weight": f"{_STEM}.norm.weight",
    "patch_embed.backbone.norm.bias": f"{_STEM}.norm.bias",
}
TIMM_SPELLINGS["resnet_d"] = {  # timm's resnet.py: conv1 a Sequential (convs 0, 3, 6; norms 1, 4), bn1, layer1..4
    **{f"patch_embed.backbone.conv1.{index}.weight": f"{_STEM}.conv{n}.weight" for n, index in ((1, 0), (2, 3), (3, 6))},
    **{f"patch_embed.backbone.conv1.{index}.{key}": f"{_STEM}.norm{n}.{key}" for n, index in ((1, 1), (2, 4))
       for key in _BATCH_NORM},
    **{f"patch_embed.backbone.bn1.{key}": f"{_STEM}.norm3.{key}" for key in _BATCH_NORM},
    **{f"patch_embed.backbone.layer{stage + 1}.{{i}}.{theirs}": f"{_STEM}.stages.{stage}.{{i}}.{ours}"
       for stage in range(4) for theirs, ours in (  # (layer1..4: stages 0..3; {i}: the block)
           [(f"conv{n}.weight", f"conv{n}.weight") for n in (1, 2, 3)]
           + [(f"bn{n}.{key}", f"norm{n}.{key}") for n in (1, 2, 3) for key in _BATCH_NORM]
           + [("downsample.1.weight", "downsample.conv.weight")]  # (downsample.0: the average pool)
           + [(f"downsample.2.{key}", f"downsample.norm.{key}") for key in _BATCH_NORM])},
}
TIMM_SPELLINGS["mobileclip"] = {  # ConvNormAct modules 0, 1, 2: conv and bn each (the last without a norm)
    **{f"patch_embed.backbone.{n - 1}.conv.weight": f"{_STEM}.conv{n}.weight" for n in (1, 2, 3)},
    "patch_embed.backbone.2.conv.bias": f"{_STEM}.conv3.bias",
    **{f"patch_embed.backbone.{n - 1}.bn.{key}": f"{_STEM}.norm{n}.{key}" for n in (1, 2) for key in _BATCH_NORM},
}

TIMM_SPELLINGS["naflex"] = {  # NaFlexVit keeps the patch projection, its table and the prefix tokens in `embeds`
    "embeds.proj.weight": "patch_embedding.projection.weight",  # (D, P*P*C): a Linear on (row, column, channel)
    "embeds.proj.bias": "patch_embedding.projection.bias",
    "embeds.pos_embed": "patch_embedding.position_embedding",  # (1, G, G, D), resized at every forward
    "embeds.pos_embed_y": "patch_embedding.position_rows",  # (1, G, D): factorized, one table per axis
    "embeds.pos_embed_x": "patch_embedding.position_columns",
    "embeds.cls_token": "cls_token",
    "embeds.reg_token": "register_tokens",
}

# What each spelling replaces (in TIMM_TO_OURS, or in the spellings before it in a name's list).
_SEQUENTIAL = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
               "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
               "ls1.gamma", "ls2.gamma", "attn.lambda_q1", "attn.lambda_k1", "attn.lambda_q2", "attn.lambda_k2",
               "attn.sub_norm.weight", "attn.q_norm.weight", "attn.q_norm.bias", "attn.k_norm.weight", "attn.k_norm.bias")
TIMM_SPELLING_REPLACES: dict[str, tuple[str, ...]] = {
    "gamma": ("blocks.{i}.ls1.gamma", "blocks.{i}.ls2.gamma"),
    "qkv": ("blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.qkv.bias", "blocks.{i}.attn.q_bias", "blocks.{i}.attn.v_bias"),
    "qkv_biased": ("blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.qkv.bias"),
    "swiglu": ("blocks.{i}.mlp.fc1.weight", "blocks.{i}.mlp.fc1.bias"),
    "parallel": tuple(f"blocks.{{i}}.{key}" for key in _SEQUENTIAL),
    "sam": ("norm.weight", "norm.bias", "head.weight", "head.bias"),
    "bit": (), "bit_stem_only": (), "resnet_d": (), "mobileclip": (),
    "naflex": ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "reg_token"),
    "fused_out": ("blocks.{i}.attn_out_proj.weight", "blocks.{i}.attn_out_proj.bias", "blocks.{i}.mlp_out_proj.weight",
                  "blocks.{i}.mlp_out_proj.bias"),
}
# Reading, every spelling is known: a timm file says by its keys which one it uses (q_proj's bias
# goes to q_bias, EVA's, unless the file has a k_proj bias too: Sapiens2's, which weights/layouts.py's
# _prepare_timm stacks into one qkv bias first).
TIMM_READ_TABLE = {**TIMM_TO_OURS, **{k: v for kind, table in TIMM_SPELLINGS.items() if kind != "qkv_biased"
                                      for k, v in table.items()}}
# Where the final LayerNorm follows the pooling (timm's fc_norm: GAP ViTs with registers), timm
# stores it as fc_norm.* and leaves norm.* out; ours is final_norm either way (vit/model.py).
TIMM_FC_NORM = {"fc_norm.weight": "norm.weight", "fc_norm.bias": "norm.bias"}

INDICES = ("{i}", "{j}")  # a block's index, then a branch's within it


def _fill(pattern: str, indices) -> str:
    """"blocks.{i}.attns.{j}.norm.weight" with indices ("3", "1") -> "blocks.3.attns.1.norm.weight"."""
    for placeholder, index in zip(INDICES, indices):
        pattern = pattern.replace(placeholder, index)
    return pattern


def _pattern(key_pattern: str) -> re.Pattern:
    """"encoder.layers.encoder_layer_{i}.ln_1.weight" -> a regex whose groups are the indices."""
    regex = re.escape(key_pattern)
    for placeholder in INDICES:
        regex = regex.replace(re.escape(placeholder), r"(\d+)")
    return re.compile(regex)


def _skeleton(key: str) -> str:
    """A key with every number (and every {i}, {j}) as "#": table entries a key may match share it."""
    return re.sub(r"\{[ij]\}|\d+", "#", key)


def rename(state_dict: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every key through `table` (theirs -> ours, with `{i}` and `{j}` indices anywhere in a key:
    "blocks.{i}.", "encoder_layer_{i}.", "encoderblock_{i}/"). A key the table does not know is
    an error: nothing is dropped silently."""
    candidates: dict[str, list] = {}  # skeleton -> [(regex, our key pattern)]: a few regexes per key, not all
    for theirs, ours in table.items():
        candidates.setdefault(_skeleton(theirs), []).append((_pattern(theirs), ours))
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        for pattern, target in candidates.get(_skeleton(key), ()):
            match = pattern.fullmatch(key)
            if match:
                converted[_fill(target, match.groups())] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"keys with no place in our ViT: {', '.join(unknown[:10])}")
    return converted


def timm_table(spellings: tuple[str, ...]) -> dict[str, str]:
    """timm's keys -> ours for a name whose timm file uses `spellings` (vit/families.py's
    timm_keys), each replacing what its TIMM_SPELLING_REPLACES says: the table an export writes with."""
    table = dict(TIMM_TO_OURS)
    for kind in spellings:
        table = {k: v for k, v in table.items() if k not in TIMM_SPELLING_REPLACES[kind]}
        table.update(TIMM_SPELLINGS[kind])
    return table


# Our fused tensors, by the module that holds them, and the parts their rows are made of, in
# order: "qkv.weight[q]" names the query rows of an attention's qkv projection, "fc1.weight[g]"
# the first half (the gate) of a gated MLP's fc1, "kv.weight[k]" the key rows of the attention
# pool's kv projection.
FUSED_PARTS = {"qkv": "qkv", "fc1": "gx", "kv": "kv"}


def _parts_of(key: str) -> str:
    """"blocks.0.attention.qkv.weight" -> "qkv", the parts of that fused tensor."""
    return FUSED_PARTS[key.split(".")[-2]]


def _part_rows(state_dict: dict[str, torch.Tensor], key: str, parts: str) -> list[int]:
    """How many rows of our fused tensor `key` each part has: q has D (the width), k and v share
    the rest (fewer than D with grouped-query attention); a gate and its value half each, a key
    and a value each."""
    rows = state_dict[key].shape[0]
    if parts == "qkv":
        width = state_dict[key.rsplit(".", 1)[0] + ".weight"].shape[1]
        return [width, (rows - width) // 2, (rows - width) // 2]
    return [rows // 2, rows // 2]


# timm tensors that hold two of ours (its parallel blocks): name -> (axis, parts in order). Which
# rows or columns are whose follows from the width D (the input projection's columns, the output
# projection's rows): in_proj = rows [MLP hidden; q, k, v (3D)], out_proj = columns [attention (D); MLP].
THEIR_FUSED = {"in_proj": (0, ("mlp", "qkv")), "out_proj": (1, ("attn", "mlp"))}


def _their_sizes(name: str, tensor: torch.Tensor, width: int) -> list[int]:
    if name == "in_proj":
        return [tensor.shape[0] - 3 * width, 3 * width]
    return [width, tensor.shape[1] - width]


def split_theirs(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's fused parallel-block tensors -> their parts ("blocks.0.in_proj.weight[mlp]", ...)."""
    split = {}
    for key, tensor in state_dict.items():
        match = re.fullmatch(r"(blocks\.\d+)\.(in_proj|out_proj)\.(weight|bias)", key)
        if match is None or (match.group(2) == "out_proj" and match.group(3) == "bias"):
            split[key] = tensor  # (out_proj's bias is the attention's whole)
            continue
        block, name, kind = match.groups()
        axis, parts = THEIR_FUSED[name]
        weight = state_dict[f"{block}.{name}.weight"]
        width = weight.shape[1] if name == "in_proj" else weight.shape[0]
        for part, piece in zip(parts, tensor.split(_their_sizes(name, tensor, width), dim=axis)):
            split[f"{key}[{part}]"] = piece
    return split


def _join_theirs(converted: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse of split_theirs, on a state dict in timm's layout. timm's in_proj has a bias
    only when q, k and v have one; else the MLP's bias is its separate mlp_bias."""
    joined = {k: v for k, v in converted.items() if not k.endswith("]")}
    for key in [k for k in converted if k.endswith("[mlp]")]:
        base = key[: -len("[mlp]")]
        name = base.split(".")[-2]
        axis, parts = THEIR_FUSED[name]
        if any(f"{base}[{part}]" not in converted for part in parts):  # an in_proj without q, k, v biases
            continue
        joined[base] = torch.cat([converted[f"{base}[{part}]"] for part in parts], dim=axis)
        if base.endswith("in_proj.bias"):
            joined.pop(base.replace("in_proj.bias", "mlp_bias"), None)
    return joined


def fuse_parts(renamed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack separate parts ("...qkv.weight[q]", "...fc1.weight[g]", ...) into the fused tensor:
    rows [q; k; v], [gate; value] or [k; v]."""
    converted = {k: v for k, v in renamed.items() if not k.endswith("]")}
    for key in [k for k in renamed if k.endswith("]")]:
        base = key[: -len("[q]")]
        if base not in converted:
            converted[base] = torch.cat([renamed[f"{base}[{part}]"] for part in _parts_of(base)], dim=0)
    return converted


def from_ours(state_dict: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Ours -> another layout, reading `table` (theirs -> ours) backwards: one table serves both
    ways. A target such as "blocks.{i}.attention.qkv.weight[k]" names the middle third of our
    fused qkv tensor, which becomes their separate key projection."""
    converted, used = {}, set()
    for their_pattern, our_pattern in table.items():
        part = our_pattern[-2] if our_pattern.endswith("]") else None
        base = our_pattern[: -len("[q]")] if part else our_pattern
        regex = _pattern(base)
        for key, tensor in state_dict.items():
            match = regex.fullmatch(key)
            if not match:
                continue
            if part:  # rows [q; k; v] of the fused projection, or [gate; value] of a gated fc1
                parts = _parts_of(key)
                tensor = tensor.split(_part_rows(state_dict, key, parts), dim=0)[parts.index(part)]
            converted[_fill(their_pattern, match.groups())] = tensor
            used.add(key)
    left = [k for k in state_dict if k not in used]
    if left:
        raise ValueError(f"keys with no place in that layout: {', '.join(left[:10])}")
    return _join_theirs(converted)
