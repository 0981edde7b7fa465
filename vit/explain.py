"""What the model looks at: its attention weights, attention rollout, and the CLS token's view.

The model computes attention with one fused kernel (F.scaled_dot_product_attention), which never
materialises the weights. Here they are computed again, written out, from the very inputs each
block's attention receives (caught by a forward hook, so the model's own output is untouched):

    A = softmax(q k^T / sqrt(head_dim))        (B, heads, T, T), each row sums to 1

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
    """One float32 tensor per encoder block, (B, heads, T, T): the post-softmax attention weights
    softmax(q k^T / sqrt(head_dim)) that block applied to `images` (B, 3, S, S)."""
    inputs = []  # the normed tokens each block's attention received, in block order

    def keep_input(module, args):
        inputs.append(args[0])

    hooks = [block.attention.register_forward_pre_hook(keep_input) for block in model.blocks]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    maps = []
    for block, x in zip(model.blocks, inputs):
        attention = block.attention
        qkv = attention.qkv(x).float()  # (B, T, 3*D): the same projection the block made
        q, k, _ = rearrange(qkv, "b t (qkv h hd) -> qkv b h t hd", qkv=3, h=attention.num_heads)
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, H, T, T): every query against every key
        maps.append(scores.softmax(dim=-1))
    return maps


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
