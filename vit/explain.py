"""What the model looks at: its attention weights, attention rollout, and the CLS token's view.

The model computes attention with one fused kernel (F.scaled_dot_product_attention), which never
materialises the weights. Here each block's attention is asked to keep them (its `keep_weights`
switch): the same forward pass, the same q, k and v, with RoPE and any relative bias applied, but
the softmax written out, so the maps are exactly what the model attends with:

    A = softmax(rope(q) rope(k)^T / sqrt(head_dim) + relative_bias)   (B, heads, T, T), rows sum to 1

T counts every token: the CLS token first (then, in some families, a distillation token or
registers: cfg.num_prefix_tokens in all), then the patches in row-major order.

Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers") follows
how much each input patch can reach the CLS token through the stack, residual path included:

    A_hat_l = 0.5 * mean_over_heads(A_l) + 0.5 * I,   rows renormalised to sum to 1
    R = A_hat_L @ ... @ A_hat_1
    rollout = R[CLS, patches] reshaped to the patch grid, divided by its maximum

Models without a CLS token (SigLIP, GAP ViTs) read the mean of the patch tokens, so there the
row read is the mean of the patch tokens' rows.
"""

import math

import torch
from einops import rearrange

from vit.model import ViTConfig, VisionTransformer


@torch.no_grad()
def attention_maps(model: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """One float32 tensor per encoder block, (B, heads, T, T): the attention weights that block
    applied to `images` (B, 3, S, S), from the model's own attention (vit/model.py); a block of
    several attentions side by side (BranchedBlock) gives all their heads, branch after branch."""
    per_block = [block.attentions for block in model.blocks]
    attentions = [attention for block in per_block for attention in block]
    for attention in attentions:
        attention.keep_weights = True
    try:
        model(images)
        return [torch.cat([attention.weights for attention in block], dim=1) for block in per_block]
    finally:
        for attention in attentions:
            attention.keep_weights, attention.weights = False, None


def rollout(maps: list[torch.Tensor], cfg: ViTConfig = ViTConfig()) -> torch.Tensor:
    """(B, grid, grid) from the blocks' attention maps: how much each patch flows into the CLS
    token through the whole stack, Abnar & Zuidema's rollout (see the module's docstring),
    scaled so that its maximum is 1. cfg: the model's (where its prefix tokens and CLS are)."""
    tokens = maps[0].shape[-1]
    identity = torch.eye(tokens, device=maps[0].device)
    flow = identity.expand_as(maps[0][:, 0]).clone()  # (B, T, T)
    for attention in maps:  # block 1 first: R = A_hat_L @ ... @ A_hat_1
        a_hat = 0.5 * attention.mean(dim=1) + 0.5 * identity  # the residual stream carries half
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        flow = a_hat @ flow
    heatmap = _read_row(flow, cfg)  # the CLS token's row, over the patch tokens: (B, grid, grid)
    return heatmap / heatmap.amax(dim=(1, 2), keepdim=True)


def last_cls_attention(maps: list[torch.Tensor], cfg: ViTConfig = ViTConfig()) -> torch.Tensor:
    """(B, heads, grid, grid) from the blocks' attention maps: where the CLS token looks in the
    last block, head by head."""
    return _read_row(maps[-1], cfg)  # from (B, H, T, T)


def _read_row(matrix: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """(..., T, T) -> (..., grid, grid): the row of the token the classifier reads (the CLS
    token; without one, the mean of the patch tokens' rows), over the patch columns only."""
    prefix = cfg.num_prefix_tokens
    row = matrix[..., 0, :] if cfg.class_token else matrix[..., prefix:, :].mean(dim=-2)  # (..., T)
    grid = math.isqrt(row.shape[-1] - prefix)
    return rearrange(row[..., prefix:], "... (gh gw) -> ... gh gw", gh=grid, gw=grid)


def attention_rollout(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(B, grid, grid): the rollout of `model` on `images`."""
    return rollout(attention_maps(model, images), model.cfg)


def cls_attention(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, grid, grid): the last block's CLS attention of `model` on `images`, per head."""
    return last_cls_attention(attention_maps(model, images), model.cfg)
