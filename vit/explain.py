"""What the model looks at: its attention weights, attention rollout, and the CLS token's view.

The model computes attention with one fused kernel (F.scaled_dot_product_attention), which never
materialises the weights. `recording_attention` hooks each attention's core (SoftmaxAttention):
the same forward pass, and from the same q, k and bias the kernel received (RoPE and any
relative bias applied) it writes the weights out, so the maps are exactly what the model attends
with:

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
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange

from vit.config import ViTConfig

from vit.layers.attention import MultiHeadSelfAttention

from vit.model import VisionTransformer


@dataclass
class Look:
    """One forward pass, seen from inside: every block's attention maps, the final tokens, and
    the logits (what the model outputs: class scores, or pooled features without a head)."""

    maps: list[torch.Tensor]  # per block, (B, heads, T, T) float32
    tokens: torch.Tensor  # (B, T, D): forward_features, the normed final tokens
    logits: torch.Tensor  # (B, num_classes), or (B, D) for a backbone


@contextmanager
def recording_attention(model: VisionTransformer):
    """Inside the `with`, every forward of `model` records each attention's weights: yields a dict
    {attention module: [(B, H, T, T) float32, ...]}, one entry per call of its softmax core (a
    differential attention makes two, which its `attention_map` combines). The model itself is
    unchanged: forward hooks on its SoftmaxAttention modules, removed on leaving."""
    recorded: dict[MultiHeadSelfAttention, list[torch.Tensor]] = {}
    handles = []
    for attention in (m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)):
        recorded[attention] = []

        def keep(core, args, output, maps=recorded[attention]):
            q, k, _, bias = args
            maps.append(core.weights(q, k, bias))

        handles.append(attention.softmax_attention.register_forward_hook(keep))
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def check_explainable(cfg: ViTConfig) -> None:
    """ValueError (one line) for a model whose blocks do not hold the token its classifier reads:
    CaiT's CLS token joins only after them, in its class-attention blocks."""
    if cfg.class_attention_blocks:
        raise ValueError("attention maps read the CLS token's row in every block; CaiT's CLS token joins only after "
                         "them (its class-attention blocks), which these pictures do not cover")


@torch.no_grad()
def look(model: VisionTransformer, images: torch.Tensor) -> Look:
    """Run `model` once on `images` (B, 3, S, S), recording each block's attention weights (the
    module docstring): the maps, from the model's own attention (vit/model.py); a block of
    several attentions side by side (BranchedBlock) gives all their heads, branch after branch."""
    check_explainable(model.cfg)
    with recording_attention(model) as recorded:
        tokens = model.forward_features(images)
        logits = model.forward_head(tokens)
    maps = [torch.cat([attention.attention_map(recorded[attention]) for attention in block.attentions], dim=1)
            for block in model.blocks]
    return Look(maps=maps, tokens=tokens.float(), logits=logits.float())


def attention_maps(model: VisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """One float32 tensor per encoder block, (B, heads, T, T): the attention weights that block
    applied to `images` (B, 3, S, S)."""
    return look(model, images).maps


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
    return token_attention(maps, cfg, layer=-1)


def token_attention(maps: list[torch.Tensor], cfg: ViTConfig, layer: int, token: int | None = None) -> torch.Tensor:
    """(B, heads, grid, grid): where one token looks in block `layer`, head by head. token: an
    index into the patches (row-major), or None for the token the classifier reads (the CLS
    token; without one, the mean of the patch tokens' rows)."""
    if token is None:
        return _read_row(maps[layer], cfg)
    return _to_grid(maps[layer][..., cfg.num_prefix_tokens + token, cfg.num_prefix_tokens:])


def patch_pca(tokens: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """(B, grid, grid, 3) in [0, 1]: each patch's final token projected on the first three
    principal components of the image's patch tokens, as RGB, each scaled to its range (the
    picture of DINOv2's Figure 1: parts of one kind share a colour)."""
    patches = tokens[:, cfg.num_prefix_tokens:].float()  # (B, N, D)
    centred = patches - patches.mean(dim=1, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: (B, min(N, D), D), rows the components
    components = centred @ v[:, :3].transpose(1, 2)  # (B, N, 3)
    low, high = components.amin(dim=1, keepdim=True), components.amax(dim=1, keepdim=True)
    return _to_grid(((components - low) / (high - low).clamp_min(1e-8)).transpose(1, 2)).permute(0, 2, 3, 1)


def patch_similarity(tokens: torch.Tensor, cfg: ViTConfig, patch: int) -> torch.Tensor:
    """(B, grid, grid) in [-1, 1]: the cosine similarity of every patch's final token to patch
    `patch`'s (row-major index)."""
    patches = torch.nn.functional.normalize(tokens[:, cfg.num_prefix_tokens:].float(), dim=-1)  # (B, N, D)
    return _to_grid((patches @ patches[:, patch].unsqueeze(-1)).squeeze(-1))  # (B, N, D) @ (B, D, 1)


def _to_grid(row: torch.Tensor) -> torch.Tensor:
    """(..., N) over the patches -> (..., grid, grid), row-major."""
    grid = math.isqrt(row.shape[-1])
    return rearrange(row, "... (gh gw) -> ... gh gw", gh=grid, gw=grid)


def _read_row(matrix: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    """(..., T, T) -> (..., grid, grid): the row of the token the classifier reads (the CLS
    token; without one, the mean of the patch tokens' rows), over the patch columns only."""
    prefix = cfg.num_prefix_tokens
    row = matrix[..., 0, :] if cfg.class_token else matrix[..., prefix:, :].mean(dim=-2)  # (..., T)
    return _to_grid(row[..., prefix:])


def attention_rollout(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(B, grid, grid): the rollout of `model` on `images`."""
    return rollout(attention_maps(model, images), model.cfg)


def cls_attention(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, grid, grid): the last block's CLS attention of `model` on `images`, per head."""
    return last_cls_attention(attention_maps(model, images), model.cfg)
