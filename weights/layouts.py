"""Every checkpoint layout we read, in one registry: a layout is one key table and one entry.

A checkpoint's keys say which code base wrote it: timm's `patch_embed.proj.weight`,
torchvision's `conv_proj.weight`, OpenCLIP's `visual.conv1.weight`, the JAX releases'
`embedding/kernel`. Each layout below is a table, their keys -> ours (print one with
`python -m weights keymap --layout NAME`), and an entry in LAYOUTS that says how to recognise
the file and what to do before and after renaming where shapes differ (JAX kernels are stored
transposed, CLIP keeps its class token as a vector, ...). Converting is always the same three
steps (Layout.to_ours): prepare their tensors, rename every key by the table (an unknown key is
an error, never dropped), stack the parts of fused tensors, then finish.

To add a layout: write its table, and one Layout(...) in LAYOUTS.
"""

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from weights.convert import TIMM_FC_NORM, TIMM_READ_TABLE, TIMM_TO_OURS, fuse_parts, rename, split_theirs

Tensors = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# transformers: ViT, DINOv2, SigLIP and CLIP (each image tower as its files hold it)
# ---------------------------------------------------------------------------------------------
# Hugging Face transformers' ViTForImageClassification (google/vit-base-patch16-224) -> ours.
# Its attention keeps q, k and v as three Linear layers; ours has one fused qkv Linear, so
# those three are concatenated (in q, k, v order) into `attention.qkv`.
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
# q, k, v in one in_proj (3D, D), split on reading into q (D rows) and kv (2D rows).
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



# transformers' CLIPVisionModel, or the image tower (`vision_model.`, `visual_projection`) of a
# whole CLIPModel, whose text tower is left out -> ours. CLIP keeps its class token as a vector
# (D,) and its positions as an nn.Embedding (1+N, D); its projection into the shared image-text
# space, a bias-free Linear, becomes our head (with a zero bias, as timm does), so that the model
# returns what get_image_features returns. ("pre_layrnorm" is transformers' spelling.)
HF_CLIP_TO_OURS: dict[str, str] = {
    "vision_model.embeddings.class_embedding": "cls_token",  # (D,) -> (1, 1, D)
    "vision_model.embeddings.patch_embedding.weight": "patch_embedding.projection.weight",  # no bias
    "vision_model.embeddings.position_embedding.weight": "position_embedding",  # (1+N, D) -> (1, 1+N, D)
    "vision_model.pre_layrnorm.weight": "norm_before_blocks.weight",
    "vision_model.pre_layrnorm.bias": "norm_before_blocks.bias",
    "vision_model.encoder.layers.{i}.layer_norm1.weight": "blocks.{i}.attention_norm.weight",
    "vision_model.encoder.layers.{i}.layer_norm1.bias": "blocks.{i}.attention_norm.bias",
    "vision_model.encoder.layers.{i}.self_attn.q_proj.weight": "blocks.{i}.attention.qkv.weight[q]",
    "vision_model.encoder.layers.{i}.self_attn.q_proj.bias": "blocks.{i}.attention.qkv.bias[q]",
    "vision_model.encoder.layers.{i}.self_attn.k_proj.weight": "blocks.{i}.attention.qkv.weight[k]",
    "vision_model.encoder.layers.{i}.self_attn.k_proj.bias": "blocks.{i}.attention.qkv.bias[k]",
    "vision_model.encoder.layers.{i}.self_attn.v_proj.weight": "blocks.{i}.attention.qkv.weight[v]",
    "vision_model.encoder.layers.{i}.self_attn.v_proj.bias": "blocks.{i}.attention.qkv.bias[v]",
    "vision_model.encoder.layers.{i}.self_attn.out_proj.weight": "blocks.{i}.attention.out_proj.weight",
    "vision_model.encoder.layers.{i}.self_attn.out_proj.bias": "blocks.{i}.attention.out_proj.bias",
    "vision_model.encoder.layers.{i}.layer_norm2.weight": "blocks.{i}.mlp_norm.weight",
    "vision_model.encoder.layers.{i}.layer_norm2.bias": "blocks.{i}.mlp_norm.bias",
    "vision_model.encoder.layers.{i}.mlp.fc1.weight": "blocks.{i}.mlp.fc1.weight",
    "vision_model.encoder.layers.{i}.mlp.fc1.bias": "blocks.{i}.mlp.fc1.bias",
    "vision_model.encoder.layers.{i}.mlp.fc2.weight": "blocks.{i}.mlp.fc2.weight",
    "vision_model.encoder.layers.{i}.mlp.fc2.bias": "blocks.{i}.mlp.fc2.bias",
    "vision_model.post_layernorm.weight": "final_norm.weight",
    "vision_model.post_layernorm.bias": "final_norm.bias",
    "visual_projection.weight": "head.weight",  # (E, D); CLIPModel and CLIPVisionModelWithProjection
}


# ---------------------------------------------------------------------------------------------
# torchvision's VisionTransformer (vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14; the SWAG
# weights at 384, 512 and 518 px): q, k, v fused like ours, in nn.MultiheadAttention's in_proj.
# ---------------------------------------------------------------------------------------------
TORCHVISION_TO_OURS: dict[str, str] = {
    "conv_proj.weight": "patch_embedding.projection.weight",  # (D, C, P, P)
    "conv_proj.bias": "patch_embedding.projection.bias",
    "class_token": "cls_token",  # (1, 1, D)
    "encoder.pos_embedding": "position_embedding",  # (1, 1+N, D)
    "encoder.layers.encoder_layer_{i}.ln_1.weight": "blocks.{i}.attention_norm.weight",
    "encoder.layers.encoder_layer_{i}.ln_1.bias": "blocks.{i}.attention_norm.bias",
    "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight": "blocks.{i}.attention.qkv.weight",  # (3D, D)
    "encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias": "blocks.{i}.attention.qkv.bias",
    "encoder.layers.encoder_layer_{i}.self_attention.out_proj.weight": "blocks.{i}.attention.out_proj.weight",
    "encoder.layers.encoder_layer_{i}.self_attention.out_proj.bias": "blocks.{i}.attention.out_proj.bias",
    "encoder.layers.encoder_layer_{i}.ln_2.weight": "blocks.{i}.mlp_norm.weight",
    "encoder.layers.encoder_layer_{i}.ln_2.bias": "blocks.{i}.mlp_norm.bias",
    "encoder.layers.encoder_layer_{i}.mlp.0.weight": "blocks.{i}.mlp.fc1.weight",  # an nn.Sequential:
    "encoder.layers.encoder_layer_{i}.mlp.0.bias": "blocks.{i}.mlp.fc1.bias",  # Linear, GELU, Dropout,
    "encoder.layers.encoder_layer_{i}.mlp.3.weight": "blocks.{i}.mlp.fc2.weight",  # Linear, Dropout
    "encoder.layers.encoder_layer_{i}.mlp.3.bias": "blocks.{i}.mlp.fc2.bias",
    "encoder.layers.encoder_layer_{i}.mlp.linear_1.weight": "blocks.{i}.mlp.fc1.weight",  # before torchvision 0.13
    "encoder.layers.encoder_layer_{i}.mlp.linear_1.bias": "blocks.{i}.mlp.fc1.bias",
    "encoder.layers.encoder_layer_{i}.mlp.linear_2.weight": "blocks.{i}.mlp.fc2.weight",
    "encoder.layers.encoder_layer_{i}.mlp.linear_2.bias": "blocks.{i}.mlp.fc2.bias",
    "encoder.ln.weight": "final_norm.weight",
    "encoder.ln.bias": "final_norm.bias",
    "heads.head.weight": "head.weight",  # (num_classes, D)
    "heads.head.bias": "head.bias",
}


# ---------------------------------------------------------------------------------------------
# OpenCLIP (and OpenAI's CLIP): `visual.` is the image tower; the text tower is left out. Its
# projection `visual.proj` (D, E) becomes our head (transposed, with a zero bias, as timm does),
# so that the model returns what encode_image returns.
# ---------------------------------------------------------------------------------------------
OPENCLIP_TO_OURS: dict[str, str] = {
    "visual.conv1.weight": "patch_embedding.projection.weight",  # (D, C, P, P), no bias
    "visual.class_embedding": "cls_token",  # (D,) -> (1, 1, D)
    "visual.positional_embedding": "position_embedding",  # (1+N, D) -> (1, 1+N, D)
    "visual.ln_pre.weight": "norm_before_blocks.weight",
    "visual.ln_pre.bias": "norm_before_blocks.bias",
    "visual.transformer.resblocks.{i}.ln_1.weight": "blocks.{i}.attention_norm.weight",
    "visual.transformer.resblocks.{i}.ln_1.bias": "blocks.{i}.attention_norm.bias",
    "visual.transformer.resblocks.{i}.attn.in_proj_weight": "blocks.{i}.attention.qkv.weight",  # (3D, D)
    "visual.transformer.resblocks.{i}.attn.in_proj_bias": "blocks.{i}.attention.qkv.bias",
    "visual.transformer.resblocks.{i}.attn.out_proj.weight": "blocks.{i}.attention.out_proj.weight",
    "visual.transformer.resblocks.{i}.attn.out_proj.bias": "blocks.{i}.attention.out_proj.bias",
    "visual.transformer.resblocks.{i}.ls_1.gamma": "blocks.{i}.attention_scale.gamma",  # layer scale, if any
    "visual.transformer.resblocks.{i}.ln_2.weight": "blocks.{i}.mlp_norm.weight",
    "visual.transformer.resblocks.{i}.ln_2.bias": "blocks.{i}.mlp_norm.bias",
    "visual.transformer.resblocks.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.fc1.weight",
    "visual.transformer.resblocks.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.fc1.bias",
    "visual.transformer.resblocks.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.fc2.weight",
    "visual.transformer.resblocks.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.fc2.bias",
    "visual.transformer.resblocks.{i}.ls_2.gamma": "blocks.{i}.mlp_scale.gamma",
    "visual.ln_post.weight": "final_norm.weight",
    "visual.ln_post.bias": "final_norm.bias",
    "visual.proj": "head.weight",  # (D, E) -> (E, D)
}


# ---------------------------------------------------------------------------------------------
# Meta's own DINOv2 and DINOv3 releases (facebookresearch/dinov2, dinov3): timm's names, but for
# a few tensors. Their mask_token (for masked-image training), DINOv3's RoPE periods (a buffer:
# our RoPE computes its own) and its 7B's local-crop CLS norm are not part of the model we build.
# ---------------------------------------------------------------------------------------------
META_DINOV2_TO_OURS: dict[str, str] = {
    **TIMM_TO_OURS,
    "register_tokens": "register_tokens",  # (1, R, D); timm calls it reg_token
    "blocks.{i}.mlp.w12.weight": "blocks.{i}.mlp.fc1.weight",  # ViT-g's SwiGLU: rows [gate; value]
    "blocks.{i}.mlp.w12.bias": "blocks.{i}.mlp.fc1.bias",
    "blocks.{i}.mlp.w3.weight": "blocks.{i}.mlp.fc2.weight",
    "blocks.{i}.mlp.w3.bias": "blocks.{i}.mlp.fc2.bias",
}
META_DINOV3_TO_OURS: dict[str, str] = {
    **TIMM_TO_OURS,
    "storage_tokens": "register_tokens",  # (1, 4, D): DINOv3's name for registers
    # (its qkv.bias is split into timm's q_bias and v_bias first: _prepare_meta_dinov3)
    "blocks.{i}.mlp.w1.weight": "blocks.{i}.mlp.fc1.weight[g]",  # SwiGLU (ViT-S+, H+, 7B): gate,
    "blocks.{i}.mlp.w1.bias": "blocks.{i}.mlp.fc1.bias[g]",
    "blocks.{i}.mlp.w2.weight": "blocks.{i}.mlp.fc1.weight[x]",  # value,
    "blocks.{i}.mlp.w2.bias": "blocks.{i}.mlp.fc1.bias[x]",
    "blocks.{i}.mlp.w3.weight": "blocks.{i}.mlp.fc2.weight",  # and out
    "blocks.{i}.mlp.w3.bias": "blocks.{i}.mlp.fc2.bias",
}
META_DROPPED = ("mask_token", "rope_embed.periods", "local_cls_norm.weight", "local_cls_norm.bias")


# ---------------------------------------------------------------------------------------------
# JAX/Flax .npz files, read with numpy (no JAX needed). Keys are paths in the parameter tree.
# Flax stores a Dense kernel as (in, out), ours (out, in); attention kernels keep the heads apart,
# (D, heads, head_dim); the patch kernel is (P, P, C, D) (HWIO). _prepare_jax reshapes each to
# ours before the tables below rename them.
# ---------------------------------------------------------------------------------------------
# The ViT paper's files (google-research/vision_transformer, the AugReg releases), maybe under
# "opt/target/". Its modules are numbered in order of creation: LayerNorm_0, the attention _1,
# LayerNorm_2, the MLP _3.
JAX_VIT_TO_OURS: dict[str, str] = {
    "embedding/kernel": "patch_embedding.projection.weight",  # (P, P, C, D) -> (D, C, P, P)
    "embedding/bias": "patch_embedding.projection.bias",
    "cls": "cls_token",  # (1, 1, D)
    "Transformer/posembed_input/pos_embedding": "position_embedding",  # (1, 1+N, D)
    "Transformer/encoderblock_{i}/LayerNorm_0/scale": "blocks.{i}.attention_norm.weight",
    "Transformer/encoderblock_{i}/LayerNorm_0/bias": "blocks.{i}.attention_norm.bias",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/kernel": "blocks.{i}.attention.qkv.weight[q]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/bias": "blocks.{i}.attention.qkv.bias[q]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/key/kernel": "blocks.{i}.attention.qkv.weight[k]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/key/bias": "blocks.{i}.attention.qkv.bias[k]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/value/kernel": "blocks.{i}.attention.qkv.weight[v]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/value/bias": "blocks.{i}.attention.qkv.bias[v]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/kernel": "blocks.{i}.attention.out_proj.weight",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/out/bias": "blocks.{i}.attention.out_proj.bias",
    "Transformer/encoderblock_{i}/LayerNorm_2/scale": "blocks.{i}.mlp_norm.weight",
    "Transformer/encoderblock_{i}/LayerNorm_2/bias": "blocks.{i}.mlp_norm.bias",
    "Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel": "blocks.{i}.mlp.fc1.weight",
    "Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/bias": "blocks.{i}.mlp.fc1.bias",
    "Transformer/encoderblock_{i}/MlpBlock_3/Dense_1/kernel": "blocks.{i}.mlp.fc2.weight",
    "Transformer/encoderblock_{i}/MlpBlock_3/Dense_1/bias": "blocks.{i}.mlp.fc2.bias",
    "Transformer/encoder_norm/scale": "final_norm.weight",
    "Transformer/encoder_norm/bias": "final_norm.bias",
    "head/kernel": "head.weight",  # (D, classes) -> (classes, D)
    "head/bias": "head.bias",
}
# big_vision's files (SigLIP, the later ViTs), under "params/" ("params/img/" in a two-tower
# model, whose text tower is left out). Modules numbered per kind, the positions at the top, and
# the blocks maybe "scanned": one Transformer/encoderblock/ whose arrays have a leading layer
# axis (_prepare_jax unstacks it). SigLIP pools with a MAP head (attention to a learned probe).
BIG_VISION_TO_OURS: dict[str, str] = {
    "embedding/kernel": "patch_embedding.projection.weight",  # (P, P, C, D) -> (D, C, P, P)
    "embedding/bias": "patch_embedding.projection.bias",
    "cls": "cls_token",
    "pos_embedding": "position_embedding",  # (1, N, D)
    "Transformer/encoderblock_{i}/LayerNorm_0/scale": "blocks.{i}.attention_norm.weight",
    "Transformer/encoderblock_{i}/LayerNorm_0/bias": "blocks.{i}.attention_norm.bias",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/query/kernel": "blocks.{i}.attention.qkv.weight[q]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/query/bias": "blocks.{i}.attention.qkv.bias[q]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/key/kernel": "blocks.{i}.attention.qkv.weight[k]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/key/bias": "blocks.{i}.attention.qkv.bias[k]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/value/kernel": "blocks.{i}.attention.qkv.weight[v]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/value/bias": "blocks.{i}.attention.qkv.bias[v]",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/out/kernel": "blocks.{i}.attention.out_proj.weight",
    "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/out/bias": "blocks.{i}.attention.out_proj.bias",
    "Transformer/encoderblock_{i}/LayerNorm_1/scale": "blocks.{i}.mlp_norm.weight",
    "Transformer/encoderblock_{i}/LayerNorm_1/bias": "blocks.{i}.mlp_norm.bias",
    "Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/kernel": "blocks.{i}.mlp.fc1.weight",
    "Transformer/encoderblock_{i}/MlpBlock_0/Dense_0/bias": "blocks.{i}.mlp.fc1.bias",
    "Transformer/encoderblock_{i}/MlpBlock_0/Dense_1/kernel": "blocks.{i}.mlp.fc2.weight",
    "Transformer/encoderblock_{i}/MlpBlock_0/Dense_1/bias": "blocks.{i}.mlp.fc2.bias",
    "Transformer/encoder_norm/scale": "final_norm.weight",
    "Transformer/encoder_norm/bias": "final_norm.bias",
    "MAPHead_0/probe": "attention_pool.query",  # (1, 1, D)
    "MAPHead_0/MultiHeadDotProductAttention_0/query/kernel": "attention_pool.q.weight",
    "MAPHead_0/MultiHeadDotProductAttention_0/query/bias": "attention_pool.q.bias",
    "MAPHead_0/MultiHeadDotProductAttention_0/key/kernel": "attention_pool.kv.weight[k]",
    "MAPHead_0/MultiHeadDotProductAttention_0/key/bias": "attention_pool.kv.bias[k]",
    "MAPHead_0/MultiHeadDotProductAttention_0/value/kernel": "attention_pool.kv.weight[v]",
    "MAPHead_0/MultiHeadDotProductAttention_0/value/bias": "attention_pool.kv.bias[v]",
    "MAPHead_0/MultiHeadDotProductAttention_0/out/kernel": "attention_pool.out_proj.weight",
    "MAPHead_0/MultiHeadDotProductAttention_0/out/bias": "attention_pool.out_proj.bias",
    "MAPHead_0/LayerNorm_0/scale": "attention_pool.mlp_norm.weight",
    "MAPHead_0/LayerNorm_0/bias": "attention_pool.mlp_norm.bias",
    "MAPHead_0/MlpBlock_0/Dense_0/kernel": "attention_pool.mlp.fc1.weight",
    "MAPHead_0/MlpBlock_0/Dense_0/bias": "attention_pool.mlp.fc1.bias",
    "MAPHead_0/MlpBlock_0/Dense_1/kernel": "attention_pool.mlp.fc2.weight",
    "MAPHead_0/MlpBlock_0/Dense_1/bias": "attention_pool.mlp.fc2.bias",
    "head/kernel": "head.weight",
    "head/bias": "head.bias",
}
JAX_PREFIXES = ("opt/target/", "params/img/", "params/", "")  # where the image model's tree may sit


# ---------------------------------------------------------------------------------------------
# What each layout does before and after renaming
# ---------------------------------------------------------------------------------------------
def _as_is(tensors: Tensors) -> Tensors:
    return tensors


def _prepare_timm(tensors: Tensors) -> Tensors:
    """timm's parallel blocks fuse two of our tensors in one (split here); a final norm after the
    pooling is fc_norm; SAM keeps its position table as a map; Sapiens2 keeps a bias on each of q, k and v, stacked here into the one
    qkv bias timm's ViT spells."""
    tensors = {TIMM_FC_NORM.get(k, k): v for k, v in split_theirs(tensors).items()}
    if "pos_embed" in tensors and tensors["pos_embed"].ndim == 4:  # SAM's table as a map (1, R, C, D)
        tensors["pos_embed"] = tensors["pos_embed"].flatten(1, 2)  # -> (1, R*C, D), rows first as the tokens
    for key in [k for k in tensors if k.endswith("attn.k_proj.bias")]:
        attn = key.removesuffix("k_proj.bias")
        tensors[attn + "qkv.bias"] = torch.cat([tensors.pop(f"{attn}{p}_proj.bias") for p in "qkv"])
    return tensors


def _finish_registers(ours: Tensors) -> Tensors:
    """DINOv2 with registers (Meta's code, and transformers' after it) adds the first position to
    the CLS token before appending the registers; timm's layout (and ours: positions for the
    patches only) has it added once and for all: the CLS token takes it over, as timm does."""
    if "register_tokens" in ours:
        ours["cls_token"] = ours["cls_token"] + ours["position_embedding"][:, :1]
        ours["position_embedding"] = ours["position_embedding"][:, 1:]
    return ours


def _prepare_meta(tensors: Tensors) -> Tensors:
    """Meta's DINO files: what has no place in the model left out."""
    return {k: v for k, v in tensors.items() if k not in META_DROPPED and not k.endswith("bias_mask")}


def _prepare_meta_dinov3(tensors: Tensors) -> Tensors:
    """As _prepare_meta, and each qkv.bias split into q and v biases, timm's names: Meta's forward
    multiplies it by bias_mask, zero on the key rows, so those rows are not part of the model."""
    tensors = _prepare_meta(tensors)
    for key in [k for k in tensors if k.endswith("attn.qkv.bias")]:
        q, _, v = tensors.pop(key).chunk(3)
        tensors[key.replace("qkv.bias", "q_bias")], tensors[key.replace("qkv.bias", "v_bias")] = q, v
    return tensors


def _prepare_hf_vit(tensors: Tensors) -> Tensors:
    """A ViTModel has no "vit." prefix, and may carry a pooler ViTForImageClassification never uses."""
    if not any(k.startswith("vit.") for k in tensors):
        tensors = {f"vit.{k}": v for k, v in tensors.items()}
    return {k: v for k, v in _hub_names(tensors, HF_VIT_NAMES).items() if not k.startswith("vit.pooler.")}


# transformers 5 names some modules otherwise in memory (what an ONNX export of a live model
# records) than in its files, which keep the hub's names that the tables read: (regex, hub name).
HF_ATTENTION_NAMES = [(r"\.attention\.q_proj\.", ".attention.attention.query."),
                      (r"\.attention\.k_proj\.", ".attention.attention.key."),
                      (r"\.attention\.v_proj\.", ".attention.attention.value."),
                      (r"\.attention\.o_proj\.", ".attention.output.dense.")]
HF_VIT_NAMES = [(r"^(vit\.)?layers\.(\d+)\.", r"\1encoder.layer.\2."), *HF_ATTENTION_NAMES,
                (r"\.mlp\.fc1\.", ".intermediate.dense."), (r"\.mlp\.fc2\.", ".output.dense.")]



# Masked autoencoders' pretraining files (He et al. 2021): an encoder in its code base's layout and
# a decoder beside it. As a ViT's weights the encoder alone is read (the MAE layouts below); the
# decoder comes to ours through the same tables, block by block (`mae_decoder_to_ours`, for vit/mae.py).
MAE_DECODER_PARTS = {  # theirs (transformers' file; Meta's release) -> our decoder's
    "hf_mae": {"decoder.decoder_embed.weight": "embed.weight", "decoder.decoder_embed.bias": "embed.bias",
               "decoder.mask_token": "mask_token", "decoder.decoder_pos_embed": "position_embedding",
               "decoder.decoder_norm.weight": "norm.weight", "decoder.decoder_norm.bias": "norm.bias",
               "decoder.decoder_pred.weight": "predict.weight", "decoder.decoder_pred.bias": "predict.bias"},
    "meta_mae": {"decoder_embed.weight": "embed.weight", "decoder_embed.bias": "embed.bias",
                 "mask_token": "mask_token", "decoder_pos_embed": "position_embedding",
                 "decoder_norm.weight": "norm.weight", "decoder_norm.bias": "norm.bias",
                 "decoder_pred.weight": "predict.weight", "decoder_pred.bias": "predict.bias"},
    "ours_mae": {f"decoder.{part}": part for part in ("embed.weight", "embed.bias", "mask_token", "position_embedding",
                                                      "norm.weight", "norm.bias", "predict.weight", "predict.bias")},
}
MAE_DECODER_BLOCKS = {  # a decoder block's key, theirs -> the same block as its layout's encoder spells it
    "hf_mae": (r"^decoder\.decoder_(?:layers|encoder\.layer)\.(\d+)\.", r"vit.encoder.layer.\1."),  # (the hub's; transformers 5's saves)
    "meta_mae": (r"^decoder_blocks\.(\d+)\.", r"blocks.\1."),
    "ours_mae": (r"^decoder\.blocks\.(\d+)\.", r"blocks.\1."),
}
MAE_ENCODERS = {"hf_mae": "hf", "meta_mae": "timm", "ours_mae": "ours"}  # each file's encoder: this layout's names


def _strip_encoder(tensors: Tensors) -> Tensors:
    """Ours from `train --objective mae`: vit/mae.py's MaskedAutoencoder.encoder, ours already."""
    return {k.removeprefix("encoder."): v for k, v in tensors.items()}


def _encoder_of(layout: str) -> Callable[[Tensors], Tensors]:
    """An MAE file's encoder tensors (the decoder's left out), as its layout's encoder table reads them."""
    decoder = tuple(MAE_DECODER_PARTS[layout]) + ("decoder.", "decoder_blocks.")
    prepare = {"hf_mae": _prepare_hf_vit, "meta_mae": _prepare_timm, "ours_mae": _strip_encoder}[layout]
    return lambda tensors: prepare({k: v for k, v in tensors.items() if not k.startswith(decoder)})


def mae_decoder_to_ours(tensors: Tensors, layout: str) -> Tensors:
    """An MAE file's decoder in ours (vit/mae.py's Decoder): its parts renamed, its blocks through the
    encoder's table of the same layout (q, k and v fused as the encoder's are)."""
    pattern, replacement = MAE_DECODER_BLOCKS[layout]
    blocks = {re.sub(pattern, replacement, k): v for k, v in tensors.items() if re.match(pattern, k)}
    encoder = LAYOUTS[MAE_ENCODERS[layout]]
    ours = {f"blocks.{k.removeprefix('blocks.')}": v for k, v in encoder.to_ours(blocks).items()}
    parts = {ours_key: tensors[theirs] for theirs, ours_key in MAE_DECODER_PARTS[layout].items() if theirs in tensors}
    return {**parts, **ours}

def _hub_names(tensors: Tensors, names: list[tuple[str, str]]) -> Tensors:
    """Keys in transformers' in-memory names -> the hub's (keys already so stay as they are)."""
    def hub(key: str) -> str:
        for pattern, replacement in names:
            key = re.sub(pattern, replacement, key)
        return key

    return {hub(k): v for k, v in tensors.items()}


def _prepare_hf_dinov2(tensors: Tensors) -> Tensors:
    """The `dinov2.` part of a classifier, without the mask token, in the hub's names."""
    tensors = _hub_names(tensors, HF_ATTENTION_NAMES)
    return {k.removeprefix("dinov2."): v for k, v in tensors.items() if not k.endswith("mask_token")}


def _prepare_hf_siglip(tensors: Tensors) -> Tensors:
    """The image tower of a whole SiglipModel; its pooling head's in_proj rows [q; k; v] split
    into q, and k and v together (ours: q and kv)."""
    tensors = {k.removeprefix("vision_model."): v for k, v in tensors.items()
               if not k.startswith("text_model.") and k not in ("logit_scale", "logit_bias")}
    for name in ("in_proj_weight", "in_proj_bias"):
        fused = tensors.pop(f"head.attention.{name}", None)
        if fused is not None:
            q_rows = fused.shape[0] // 3
            tensors[f"head.attention.{name}[q]"], tensors[f"head.attention.{name}[kv]"] = fused[:q_rows], fused[q_rows:]
    return tensors


def _finish_positions_table(ours: Tensors) -> Tensors:
    """An nn.Embedding's (N, D) positions -> ours, (1, N, D)."""
    ours["position_embedding"] = ours["position_embedding"][None]
    return ours


def _prepare_hf_clip(tensors: Tensors) -> Tensors:
    """The image tower: the text tower, its projection and the logit scale left out. (A
    CLIPVisionModel saved by transformers 5 has no "vision_model." prefix; older ones do.)"""
    if "embeddings.class_embedding" in tensors:
        tensors = {k if k == "visual_projection.weight" else f"vision_model.{k}": v for k, v in tensors.items()}
    return {k: v for k, v in tensors.items()
            if (k.startswith("vision_model.") and not k.endswith("position_ids")) or k == "visual_projection.weight"}


def _finish_clip(ours: Tensors) -> Tensors:
    """CLIP's class token (D,) and positions (1+N, D) as ours; its bias-free projection a head
    with a zero bias."""
    ours = _finish_positions_table(ours)
    ours["cls_token"] = ours["cls_token"].reshape(1, 1, -1)
    if "head.weight" in ours:
        ours["head.bias"] = torch.zeros(ours["head.weight"].shape[0], dtype=ours["head.weight"].dtype)
    return ours


def _prepare_openclip(tensors: Tensors) -> Tensors:
    """The image tower of an OpenCLIP (or OpenAI CLIP) file, "module." of a DDP save removed;
    its projection (D, E) transposed into a Linear's weight (E, D)."""
    tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if k.startswith("visual.")}
    if "visual.proj" in tensors:
        tensors["visual.proj"] = tensors["visual.proj"].T
    return tensors


def jax_prefix(keys) -> str | None:
    """Where the image model sits in a JAX file's tree ("params/img/", ...), or None: not one."""
    return next((p for p in JAX_PREFIXES if f"{p}embedding/kernel" in keys), None)


def _prepare_jax(arrays: Tensors) -> Tensors:
    """A JAX file's arrays -> torch tensors the tables can rename: the image model's subtree
    (other towers left out), scanned blocks unstacked, and each kernel in our shape."""
    prefix = jax_prefix(arrays)
    arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if "pre_logits/kernel" in arrays:
        # The paper's ImageNet-21k files put a Dense + tanh ("pre_logits") before the head; timm
        # and we build no such layer, so neither it nor the head that reads it is kept.
        arrays = {k: v for k, v in arrays.items() if not k.startswith(("pre_logits/", "head/"))}
    scanned = "Transformer/encoderblock/"
    for key in [k for k in arrays if k.startswith(scanned)]:  # (depth, ...) -> one array per block
        stacked = arrays.pop(key)
        for i, layer in enumerate(stacked):
            arrays[key.replace(scanned, f"Transformer/encoderblock_{i}/")] = layer
    return {key: _jax_to_torch(key, torch.from_numpy(np.ascontiguousarray(array))) for key, array in arrays.items()}


def _jax_to_torch(key: str, w: torch.Tensor) -> torch.Tensor:
    """One Flax array in our shape (timm's _n2p does the same)."""
    module, _, kind = key.rpartition("/")
    if kind == "kernel" and w.ndim == 4:  # the patch kernel (P, P, C, D), HWIO -> OIHW
        return w.permute(3, 2, 0, 1)
    if kind == "kernel" and module.endswith(("/query", "/key", "/value")):  # (D, heads, head_dim)
        return w.flatten(1).T  # -> (heads * head_dim, D)
    if kind == "kernel" and module.endswith("/out"):  # (heads, head_dim, D) -> (D, heads * head_dim)
        return w.flatten(0, 1).T
    if kind == "kernel":  # a Dense's (in, out) -> (out, in)
        return w.T
    if kind == "bias" and w.ndim == 2:  # attention biases (heads, head_dim) -> (heads * head_dim,)
        return w.flatten()
    return w


def _is_big_vision(keys) -> bool:
    prefix = jax_prefix(keys)
    return prefix is not None and (prefix.startswith("params/") or f"{prefix}pos_embedding" in keys
                                   or f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in keys)


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One code base's way of naming a ViT's tensors, and how to bring its file to ours."""

    name: str  # what `python -m weights keymap --layout` and `inspect` call it
    code: str  # whose code writes it
    table: dict[str, str] | None  # their keys -> ours (None: ours already)
    recognise: Callable[[set[str]], bool]  # from a file's keys: is it this layout?
    prepare: Callable[[Tensors], Tensors] = _as_is  # their tensors as the table reads them
    finish: Callable[[Tensors], Tensors] = _as_is  # our tensors, where shapes differ from theirs
    # transformers' defaults where its config.json is silent (None: not a transformers layout)
    hf_defaults: tuple[float, str] | None = None  # (layer_norm_eps, hidden_act)
    # How its code resizes the position table for another image size (weights/load.py's
    # POSITION_RESIZES), or a function of the file's keys where its model classes differ; None: as
    # the model's family does (timm's way, for timm's and our files)
    position_resize: str | Callable[[set[str]], str] | None = None

    def resize_for(self, keys: set[str]) -> str | None:
        """How the code that wrote a file with these keys resizes its position table."""
        return self.position_resize(keys) if callable(self.position_resize) else self.position_resize

    def to_ours(self, tensors: Tensors) -> Tensors:
        if self.table is None:
            return self.prepare(dict(tensors))
        return self.finish(fuse_parts(rename(self.prepare(dict(tensors)), self.table)))


def _has(*names: str) -> Callable[[set[str]], bool]:
    """recognise: any of these keys is in the file."""
    return lambda keys: any(name in keys for name in names)


def _ends(*suffixes: str) -> Callable[[set[str]], bool]:
    """recognise: a key of the file ends with one of these."""
    return lambda keys: any(key.endswith(suffixes) for key in keys)


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (  # the first that recognises a file wins
    Layout("ours", "this project (vit/model.py)", None, _has("patch_embedding.projection.weight")),
    Layout("ours_mae", "this project's MAE pretraining (train --objective mae: vit/mae.py; the encoder)", None,
           _has("decoder.embed.weight"), _encoder_of("ours_mae")),
    Layout("meta_mae", "Meta's MAE release with its decoder (facebookresearch/mae: mae_visualize_vit_*; the encoder)",
           TIMM_READ_TABLE, _has("decoder_embed.weight"), _encoder_of("meta_mae")),
    Layout("meta_dinov3", "Meta's DINOv3 release (facebookresearch/dinov3)", META_DINOV3_TO_OURS,
           lambda keys: "storage_tokens" in keys and "patch_embed.proj.weight" in keys, _prepare_meta_dinov3),
    Layout("meta_dinov2", "Meta's DINOv2 release (facebookresearch/dinov2)", META_DINOV2_TO_OURS,
           lambda keys: "mask_token" in keys and "patch_embed.proj.weight" in keys, _prepare_meta, _finish_registers,
           position_resize="bicubic_offset"),
    Layout("timm", "timm's VisionTransformer, Eva and Beit (the hub's timm/ files)", TIMM_READ_TABLE,
           _has("patch_embed.proj.weight", "patch_embed.backbone.0.conv.weight", "embeds.proj.weight"),
           _prepare_timm),  # (MobileCLIP's hybrid has a stem and no projection; NaFlexVit's is `embeds`)
    Layout("torchvision", "torchvision.models.VisionTransformer (vit_b_16, ..., vit_h_14)", TORCHVISION_TO_OURS,
           _has("conv_proj.weight")),
    Layout("openclip", "OpenCLIP and OpenAI CLIP (the image tower)", OPENCLIP_TO_OURS,
           _has("visual.conv1.weight", "module.visual.conv1.weight"), _prepare_openclip, _finish_clip),
    Layout("big_vision", "google-research/big_vision (.npz: SigLIP, later ViTs)", BIG_VISION_TO_OURS,
           _is_big_vision, _prepare_jax, position_resize="bilinear"),  # (as timm's .npz reader)
    Layout("jax_vit", "the ViT paper's JAX release (google-research/vision_transformer .npz)", JAX_VIT_TO_OURS,
           lambda keys: jax_prefix(keys) is not None, _prepare_jax, position_resize="bilinear"),
    Layout("hf_dinov2", "transformers' Dinov2Model / Dinov2WithRegistersModel", HF_DINOV2_TO_OURS,
           _ends("layer_scale1.lambda1"), _prepare_hf_dinov2, _finish_registers, hf_defaults=(1e-6, "gelu"),
           # Dinov2Model without antialiasing, Dinov2WithRegistersModel with it (transformers 5)
           position_resize=lambda keys: "bicubic" if "embeddings.register_tokens" in keys else "bicubic_plain"),
    Layout("hf_mae", "transformers' ViTMAEForPreTraining (facebook/vit-mae-*; the encoder)", HF_TO_OURS,
           _has("decoder.decoder_embed.weight"), _encoder_of("hf_mae"),
           hf_defaults=(1e-12, "gelu"), position_resize="bicubic_plain"),
    Layout("hf", "transformers' ViTModel / ViTForImageClassification", HF_TO_OURS,
           _ends("embeddings.patch_embeddings.projection.weight"), _prepare_hf_vit, hf_defaults=(1e-12, "gelu"),
           position_resize="bicubic_plain"),
    Layout("hf_clip", "transformers' CLIPVisionModel / CLIPModel (the image tower)", HF_CLIP_TO_OURS,
           _ends("embeddings.class_embedding"), _prepare_hf_clip, _finish_clip,
           hf_defaults=(1e-5, "quick_gelu"), position_resize="bicubic_plain"),
    Layout("hf_siglip", "transformers' SiglipVisionModel / SiglipModel (the image tower)", HF_SIGLIP_TO_OURS,
           _ends("embeddings.patch_embedding.weight"), _prepare_hf_siglip, _finish_positions_table,
           hf_defaults=(1e-6, "gelu_pytorch_tanh"), position_resize="bicubic_plain"),
)}


class UnknownLayout(ValueError):
    """A file whose keys no layout recognises."""


def detect_layout(tensors) -> Layout:
    """The layout a file's keys are in (LAYOUTS' first that recognises them)."""
    keys = set(tensors)
    for layout in LAYOUTS.values():
        if layout.recognise(keys):
            return layout
    shown = ", ".join(list(tensors)[:5]) or "no tensors at all"
    raise UnknownLayout(f"not a ViT checkpoint of a known layout ({', '.join(LAYOUTS)}); first keys: {shown}")


def to_ours(tensors: Tensors, layout: Layout | None = None) -> Tensors:
    """Any known layout -> ours."""
    return (layout or detect_layout(tensors)).to_ours(tensors)
