"""Key maps from other ViT checkpoint layouts to ours, and the conversions that use them.

Our names (vit/model.py) say what each tensor is; timm's and Hugging Face's name the same
tensors differently. The tables below are the whole story: read them to see which tensor goes
where. `{i}` stands for the block index, `{j}` for a branch within a block (timm's 18x2). A key
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
    "fused_out": {  # dpwee: one output projection, columns [attention; MLP], its bias the attention's
        "blocks.{i}.out_proj.weight[attn]": "blocks.{i}.attention.out_proj.weight",
        "blocks.{i}.out_proj.weight[mlp]": "blocks.{i}.mlp.fc2.weight",
        "blocks.{i}.out_proj.bias": "blocks.{i}.attention.out_proj.bias",
    },
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
    "fused_out": ("blocks.{i}.attn_out_proj.weight", "blocks.{i}.attn_out_proj.bias", "blocks.{i}.mlp_out_proj.weight",
                  "blocks.{i}.mlp_out_proj.bias"),
}
# Reading, every spelling is known: a timm file says by its keys which one it uses (q_proj's bias
# goes to q_bias, EVA's, unless the file has a k_proj bias too: Sapiens2's, see convert_timm).
TIMM_READ_TABLE = {**TIMM_TO_OURS, **{k: v for kind, table in TIMM_SPELLINGS.items() if kind != "qkv_biased"
                                      for k, v in table.items()}}
# Where the final LayerNorm follows the pooling (timm's fc_norm: GAP ViTs with registers), timm
# stores it as fc_norm.* and leaves norm.* out; ours is final_norm either way (vit/model.py).
TIMM_FC_NORM = {"fc_norm.weight": "norm.weight", "fc_norm.bias": "norm.bias"}

# Hugging Face transformers' ViTForImageClassification (google/vit-base-patch16-224) -> ours.
# Its attention keeps q, k and v as three Linear layers; ours has one fused qkv Linear, so
# those three are concatenated (in q, k, v order) into `attention.qkv` by `convert_hf`.
HF_TO_OURS: dict[str, str] = {
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embedding.projection.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embedding.projection.bias",
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "position_embedding",
    "vit.encoder.layer.{i}.layernorm_before.weight": "blocks.{i}.attention_norm.weight",
    "vit.encoder.layer.{i}.layernorm_before.bias": "blocks.{i}.attention_norm.bias",
    "vit.encoder.layer.{i}.attention.attention.query.weight": "blocks.{i}.attention.qkv.weight[q]",
    "vit.encoder.layer.{i}.attention.attention.query.bias": "blocks.{i}.attention.qkv.bias[q]",
    "vit.encoder.layer.{i}.attention.attention.key.weight": "blocks.{i}.attention.qkv.weight[k]",
    "vit.encoder.layer.{i}.attention.attention.key.bias": "blocks.{i}.attention.qkv.bias[k]",
    "vit.encoder.layer.{i}.attention.attention.value.weight": "blocks.{i}.attention.qkv.weight[v]",
    "vit.encoder.layer.{i}.attention.attention.value.bias": "blocks.{i}.attention.qkv.bias[v]",
    "vit.encoder.layer.{i}.attention.output.dense.weight": "blocks.{i}.attention.out_proj.weight",
    "vit.encoder.layer.{i}.attention.output.dense.bias": "blocks.{i}.attention.out_proj.bias",
    "vit.encoder.layer.{i}.layernorm_after.weight": "blocks.{i}.mlp_norm.weight",
    "vit.encoder.layer.{i}.layernorm_after.bias": "blocks.{i}.mlp_norm.bias",
    "vit.encoder.layer.{i}.intermediate.dense.weight": "blocks.{i}.mlp.fc1.weight",
    "vit.encoder.layer.{i}.intermediate.dense.bias": "blocks.{i}.mlp.fc1.bias",
    "vit.encoder.layer.{i}.output.dense.weight": "blocks.{i}.mlp.fc2.weight",
    "vit.encoder.layer.{i}.output.dense.bias": "blocks.{i}.mlp.fc2.bias",
    "vit.layernorm.weight": "final_norm.weight",
    "vit.layernorm.bias": "final_norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}

# transformers' Dinov2Model (facebook/dinov2-*), as its files hold it -> ours. Its mask_token
# (for masked-image training) has no place in a classifier and is left out.
HF_DINOV2_TO_OURS: dict[str, str] = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "register_tokens",  # Dinov2WithRegistersModel
    "embeddings.position_embeddings": "position_embedding",
    "embeddings.patch_embeddings.projection.weight": "patch_embedding.projection.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embedding.projection.bias",
    "encoder.layer.{i}.norm1.weight": "blocks.{i}.attention_norm.weight",
    "encoder.layer.{i}.norm1.bias": "blocks.{i}.attention_norm.bias",
    "encoder.layer.{i}.attention.attention.query.weight": "blocks.{i}.attention.qkv.weight[q]",
    "encoder.layer.{i}.attention.attention.query.bias": "blocks.{i}.attention.qkv.bias[q]",
    "encoder.layer.{i}.attention.attention.key.weight": "blocks.{i}.attention.qkv.weight[k]",
    "encoder.layer.{i}.attention.attention.key.bias": "blocks.{i}.attention.qkv.bias[k]",
    "encoder.layer.{i}.attention.attention.value.weight": "blocks.{i}.attention.qkv.weight[v]",
    "encoder.layer.{i}.attention.attention.value.bias": "blocks.{i}.attention.qkv.bias[v]",
    "encoder.layer.{i}.attention.output.dense.weight": "blocks.{i}.attention.out_proj.weight",
    "encoder.layer.{i}.attention.output.dense.bias": "blocks.{i}.attention.out_proj.bias",
    "encoder.layer.{i}.layer_scale1.lambda1": "blocks.{i}.attention_scale.gamma",
    "encoder.layer.{i}.norm2.weight": "blocks.{i}.mlp_norm.weight",
    "encoder.layer.{i}.norm2.bias": "blocks.{i}.mlp_norm.bias",
    "encoder.layer.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",
    "encoder.layer.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
    "encoder.layer.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",
    "encoder.layer.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
    "encoder.layer.{i}.layer_scale2.lambda1": "blocks.{i}.mlp_scale.gamma",
    "layernorm.weight": "final_norm.weight",
    "layernorm.bias": "final_norm.bias",
}

# transformers' SiglipVisionModel (the image tower of google/siglip-*) -> ours. Its positions are
# an nn.Embedding (N, D), ours a (1, N, D) tensor; its pooling head's nn.MultiheadAttention keeps
# q, k, v in one in_proj (3D, D), split by `convert_hf_siglip` into q (D rows) and kv (2D rows).
HF_SIGLIP_TO_OURS: dict[str, str] = {
    "embeddings.patch_embedding.weight": "patch_embedding.projection.weight",
    "embeddings.patch_embedding.bias": "patch_embedding.projection.bias",
    "embeddings.position_embedding.weight": "position_embedding",
    "encoder.layers.{i}.layer_norm1.weight": "blocks.{i}.attention_norm.weight",
    "encoder.layers.{i}.layer_norm1.bias": "blocks.{i}.attention_norm.bias",
    "encoder.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attention.qkv.weight[q]",
    "encoder.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attention.qkv.bias[q]",
    "encoder.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attention.qkv.weight[k]",
    "encoder.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attention.qkv.bias[k]",
    "encoder.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attention.qkv.weight[v]",
    "encoder.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attention.qkv.bias[v]",
    "encoder.layers.{i}.self_attn.out_proj.weight": "blocks.{i}.attention.out_proj.weight",
    "encoder.layers.{i}.self_attn.out_proj.bias": "blocks.{i}.attention.out_proj.bias",
    "encoder.layers.{i}.layer_norm2.weight": "blocks.{i}.mlp_norm.weight",
    "encoder.layers.{i}.layer_norm2.bias": "blocks.{i}.mlp_norm.bias",
    "encoder.layers.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",
    "encoder.layers.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
    "encoder.layers.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",
    "encoder.layers.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
    "post_layernorm.weight": "final_norm.weight",
    "post_layernorm.bias": "final_norm.bias",
    "head.probe": "attention_pool.query",
    "head.attention.in_proj_weight[q]": "attention_pool.q.weight",
    "head.attention.in_proj_bias[q]": "attention_pool.q.bias",
    "head.attention.in_proj_weight[kv]": "attention_pool.kv.weight",
    "head.attention.in_proj_bias[kv]": "attention_pool.kv.bias",
    "head.attention.out_proj.weight": "attention_pool.out_proj.weight",
    "head.attention.out_proj.bias": "attention_pool.out_proj.bias",
    "head.layernorm.weight": "attention_pool.mlp_norm.weight",
    "head.layernorm.bias": "attention_pool.mlp_norm.bias",
    "head.mlp.fc1.weight": "attention_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attention_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attention_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attention_pool.mlp.fc2.bias",
}


KEY_MAPS = {"timm": TIMM_READ_TABLE, "hf": HF_TO_OURS, "hf_dinov2": HF_DINOV2_TO_OURS, "hf_siglip": HF_SIGLIP_TO_OURS}

def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """'ours', 'timm', 'hf' (transformers' ViT), 'hf_dinov2' or 'hf_siglip', from the names of
    the patch embedding and the layer scale."""
    if "patch_embedding.projection.weight" in state_dict:
        return "ours"
    if "patch_embed.proj.weight" in state_dict:
        return "timm"
    if any(k.endswith("layer_scale1.lambda1") for k in state_dict):
        return "hf_dinov2"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in state_dict):
        return "hf"
    if any(k.endswith("embeddings.patch_embedding.weight") for k in state_dict):
        return "hf_siglip"
    shown = ", ".join(list(state_dict)[:5]) or "no tensors at all"
    raise ValueError(f"not a ViT checkpoint of a known layout (first keys: {shown})")


INDICES = ("{i}", "{j}")  # a block's index, then a branch's within it


def _fill(pattern: str, indices) -> str:
    """"blocks.{i}.attns.{j}.norm.weight" with indices ("3", "1") -> "blocks.3.attns.1.norm.weight"."""
    for placeholder, index in zip(INDICES, indices):
        pattern = pattern.replace(placeholder, index)
    return pattern


def _rename(key: str, table: dict[str, str]) -> str | None:
    """Look `key` up in `table`, whose entries may hold a `{i}` block index and a `{j}` branch index."""
    indices = re.findall(r"\.(\d+)(?=\.)", key)[:2]  # "blocks.3.attns.1.norm.weight" -> ["3", "1"]
    pattern = key
    for placeholder, index in zip(INDICES, indices):
        pattern = pattern.replace(f".{index}.", f".{placeholder}.", 1)
    target = table.get(pattern)
    return None if target is None else _fill(target, indices)


def _convert(state_dict: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        new_key = _rename(key, table)
        if new_key is None:
            unknown.append(key)
        else:
            converted[new_key] = tensor
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


def convert_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm `VisionTransformer`, `Eva` or `Beit` state dict -> ours (a renaming; separate q, k, v
    projections and SwiGLU halves are stacked into our fused tensors, and the parallel blocks'
    fused projections split into ours)."""
    table = TIMM_READ_TABLE
    if any(k.endswith("attn.k_proj.bias") for k in state_dict):  # Sapiens2: q, k and v all have biases
        table = {**table, **TIMM_SPELLINGS["qkv_biased"]}
    renamed = {TIMM_FC_NORM.get(k, k): v for k, v in _split_theirs(state_dict).items()}
    return _fuse_parts(_convert(renamed, table))


def convert_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `ViTForImageClassification` (or bare `ViTModel`) state dict -> ours."""
    if not any(k.startswith("vit.") for k in state_dict):  # a ViTModel has no "vit." prefix
        state_dict = {f"vit.{k}": v for k, v in state_dict.items()}
    # A ViTModel may carry a pooler that ViTForImageClassification never uses.
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("vit.pooler.")}
    return _fuse_parts(_convert(state_dict, HF_TO_OURS))


def convert_hf_dinov2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `Dinov2Model` or `Dinov2WithRegistersModel` (or the `dinov2.` part of a
    classifier) -> ours. With registers, transformers (as the original) adds the first position
    to the CLS token, where timm's layout (and ours: positions for patches only) has it added
    once and for all: the CLS token takes it over, as timm's converter does."""
    state_dict = {k.removeprefix("dinov2."): v for k, v in state_dict.items() if not k.endswith("mask_token")}
    ours = _fuse_parts(_convert(state_dict, HF_DINOV2_TO_OURS))
    if "register_tokens" in ours:
        ours["cls_token"] = ours["cls_token"] + ours["position_embedding"][:, :1]
        ours["position_embedding"] = ours["position_embedding"][:, 1:]
    return ours


def convert_hf_siglip(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `SiglipVisionModel`, or the image tower (`vision_model.`) of a whole
    `SiglipModel`, whose text tower and logit scale/bias are left out -> ours."""
    tensors = {k.removeprefix("vision_model."): v for k, v in state_dict.items()
               if not k.startswith("text_model.") and k not in ("logit_scale", "logit_bias")}
    for name in ("in_proj_weight", "in_proj_bias"):  # rows [q; k; v] -> q, and k and v together
        fused = tensors.pop(f"head.attention.{name}", None)
        if fused is not None:
            q_rows = fused.shape[0] // 3
            tensors[f"head.attention.{name}[q]"], tensors[f"head.attention.{name}[kv]"] = fused[:q_rows], fused[q_rows:]
    converted = _fuse_parts(_convert(tensors, HF_SIGLIP_TO_OURS))
    converted["position_embedding"] = converted["position_embedding"][None]  # (N, D) -> (1, N, D)
    return converted


# The parts our fused tensors' rows are made of, in order: "[q]" names the query rows of a qkv
# projection, "[g]" the first half (the gate) of a gated MLP's fc1.
FUSED_PARTS = ("qkv", "gx")


def _part_rows(state_dict: dict[str, torch.Tensor], key: str, parts: str) -> list[int]:
    """How many rows of our fused tensor `key` each part has: q has D (the width), k and v share
    the rest (fewer than D with grouped-query attention); a gate and its value half each."""
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


def _split_theirs(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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
    """The reverse of _split_theirs, on a state dict in timm's layout. timm's in_proj has a bias
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


def _fuse_parts(renamed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack separate parts ("...qkv.weight[q]", "...fc1.weight[g]", ...) into the fused tensor:
    rows [q; k; v], or [gate; value]."""
    converted = {k: v for k, v in renamed.items() if not k.endswith("]")}
    for parts in FUSED_PARTS:
        for key in [k for k in renamed if k.endswith(f"[{parts[0]}]")]:
            base = key[: -len("[q]")]
            converted[base] = torch.cat([renamed[f"{base}[{part}]"] for part in parts], dim=0)
    return converted


def from_ours(state_dict: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Ours -> another layout, reading `table` (theirs -> ours) backwards: one table serves both
    ways. A target such as "blocks.{i}.attention.qkv.weight[k]" names the middle third of our
    fused qkv tensor, which becomes their separate key projection."""
    converted, used = {}, set()
    for their_pattern, our_pattern in table.items():
        part = our_pattern[-2] if our_pattern.endswith("]") else None
        base = our_pattern[: -len("[q]")] if part else our_pattern
        regex = re.escape(base)
        for placeholder in INDICES:
            regex = regex.replace(re.escape(placeholder), r"(\d+)")
        regex = re.compile(regex + "$")
        for key, tensor in state_dict.items():
            match = regex.match(key)
            if not match:
                continue
            if part:  # rows [q; k; v] of the fused projection, or [gate; value] of a gated fc1
                parts = next(p for p in FUSED_PARTS if part in p)
                tensor = tensor.split(_part_rows(state_dict, key, parts), dim=0)[parts.index(part)]
            converted[_fill(their_pattern, match.groups())] = tensor
            used.add(key)
    left = [k for k in state_dict if k not in used]
    if left:
        raise ValueError(f"keys with no place in that layout: {', '.join(left[:10])}")
    return _join_theirs(converted)


def to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any known layout -> ours."""
    layout = detect_layout(state_dict)
    if layout == "timm":
        return convert_timm(state_dict)
    if layout == "hf":
        return convert_hf(state_dict)
    if layout == "hf_dinov2":
        return convert_hf_dinov2(state_dict)
    if layout == "hf_siglip":
        return convert_hf_siglip(state_dict)
    return dict(state_dict)
