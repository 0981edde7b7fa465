"""Every block's tokens, for detection and segmentation: timm's `forward_intermediates` and
DINOv2's `get_intermediate_layers`, both methods of VisionTransformer (vit/model.py).

Dense prediction heads (a DPT or a Mask R-CNN on a ViT, timm's `features_only`) read the tokens
of chosen blocks as feature maps: the patch tokens of block i, (B, N, D), laid out on the patch
grid as (B, D, rows, columns). This is the classifier's forward pass (vit/model.py) with the
tokens taken on the way; it is not on the classification path, whose forward methods stay free
of these options.

    features = model.forward_intermediates(images, indices=[3, 5, 7, 11], intermediates_only=True)
    # 4 tensors (B, D, H/P, W/P): blocks 4, 6, 8 and 12's patch tokens as maps
"""

import torch
from einops import rearrange


def take_indices(depth: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Which blocks to take, as timm reads `indices`: None all, an int n the last n, a list those
    (negative ones count from the end). ValueError, one line, for one outside the model."""
    if indices is None:
        return list(range(depth))
    whole = [isinstance(i, int) and not isinstance(i, bool) for i in (indices if isinstance(indices, (list, tuple)) else [indices])]
    if not all(whole):
        raise ValueError(f"block indices {indices!r}: whole numbers (an int, or a list of them)")
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"the last {indices} blocks: the model has {depth}")
        return list(range(depth - indices, depth))
    taken = [depth + i if i < 0 else i for i in indices]
    outside = [i for i, t in zip(indices, taken) if not 0 <= t < depth]
    if outside or not taken:
        raise ValueError(f"block indices {list(indices)}: the model's blocks are 0 to {depth - 1}")
    return taken


def forward_intermediates(model, images: torch.Tensor, indices=None, return_prefix_tokens: bool = False,
                          norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                          intermediates_only: bool = False):
    """timm's `forward_intermediates`, with its arguments and results:

    images (B, C, H, W) -> (final tokens, [block outputs]), or only the list (intermediates_only).
    indices: the blocks (take_indices). norm: each output through the model's `norm_tokens` (the
    final norm, where the model normalises tokens; after-pooling norms do not). output_fmt: "NCHW" maps (B, D, rows, columns)
    or "NLC" tokens (B, N, D), the prefix tokens (CLS, registers) cut off either way, and given
    beside each output, as (output, (B, prefix, D)) pairs, with return_prefix_tokens. stop_early:
    run no block past the last one taken (the final tokens are then that block's)."""
    if output_fmt not in ("NCHW", "NLC"):
        raise ValueError(f"output_fmt {output_fmt!r}: 'NCHW' (maps) or 'NLC' (tokens)")
    cfg = model.cfg
    taken = take_indices(len(model.blocks), indices)
    grid = cfg.grid_for(*images.shape[-2:])  # (rows, columns)
    x = model.norm_before_blocks(model.embed(images))
    blocks = model.blocks[: max(taken) + 1] if stop_early else model.blocks
    outputs = []
    for i, (block, rotation) in enumerate(zip(blocks, model.rope.rotations(grid))):
        x = model.run_block(block, x, rotation)
        if i in taken:
            outputs.append(model.norm_tokens(x) if norm else x)
    prefix = cfg.prefix_in_blocks  # (CaiT's CLS token is not in the blocks)
    prefixes = [y[:, :prefix] for y in outputs]  # (B, prefix, D) each
    outputs = [y[:, prefix:] for y in outputs]  # (B, N, D) each
    if output_fmt == "NCHW":
        outputs = [rearrange(y, "b (gh gw) d -> b d gh gw", gh=grid[0], gw=grid[1]).contiguous() for y in outputs]
    if return_prefix_tokens and prefix:
        outputs = list(zip(outputs, prefixes))
    if intermediates_only:
        return outputs
    return model.final_tokens(x), outputs


def get_intermediate_layers(model, images: torch.Tensor, n: int | list[int] = 1, reshape: bool = False,
                            return_class_token: bool = False, norm: bool = True) -> tuple:
    """DINOv2's `get_intermediate_layers` (Meta's hubconf models): the patch tokens of the last n
    blocks (or of the blocks listed), normed by default, as a tuple of (B, N, D), or of
    (B, D, rows, columns) maps with reshape; with return_class_token, (patches, (B, D) CLS
    token) pairs. Registers are cut off with the CLS token, as DINOv2 does."""
    if return_class_token and "cls_token" not in model.prefix_names:
        raise ValueError("return_class_token: this model has no CLS token in its blocks")
    outputs = forward_intermediates(model, images, n, return_prefix_tokens=True, norm=norm,
                                    output_fmt="NCHW" if reshape else "NLC", intermediates_only=True)
    if not model.cfg.prefix_in_blocks:
        return tuple(outputs)
    if return_class_token:
        return tuple((patches, prefix[:, 0]) for patches, prefix in outputs)
    return tuple(patches for patches, _ in outputs)
