"""The optimiser: AdamW over parameter groups, each with its weight decay and learning-rate scale.

Two rules, each written once:

  weight decay    on the weight matrices only: not on norms, biases and layer scales (1-D), the
                  learned tokens (CLS, distillation, registers, MAE's mask token), the positions (the table, RoPE's
                  learned frequencies, BEiT's relative bias tables). Decaying those towards zero
                  would pull the model away from what it learned, for no regularisation gain.
  layer decay     (BEiT, MAE, EVA, DINOv2 and DeiT-III fine-tune this way) the learning rate shrinks
                  by a factor `layer_decay` per layer down from the head: the head and the final norm
                  learn at the full rate, block i at layer_decay ** (depth - i), the embeddings least.
                  Early layers hold general features worth keeping; the top adapts to the new task.

Layer ids are timm's (`timm.optim.param_groups_layer_decay` with the model's `group_matcher`), so
that a recipe written for timm means the same here: the embeddings (patches, the learned tokens,
positions, the norm before the blocks) are layer 0, block i is layer i + 1, the final norm joins
the last block, and what follows the blocks (the heads, a pooling head, a norm after the pooling,
RoPE's learned frequencies) is the top layer. MAE pretraining (train/objectives.py) trains a
model around the ViT (`encoder.` before its names) with no layer decay; its AdamW betas are the
paper's.
"""

import torch

from vit.model import VisionTransformer

# Learned tensors with more than one dimension that are not weights to decay (see the docstring).
NO_WEIGHT_DECAY = ("cls_token", "distillation_token", "register_tokens", "position_embedding", "rope.freqs",
                   "patch_embedding.position_embedding", "decoder.mask_token")  # (NaFlex's table; timm decays its factorized ones)
EMBEDDINGS = ("cls_token", "distillation_token", "register_tokens", "position_embedding", "patch_embedding.", "norm_before_blocks.",
              "norm_after_patches.")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to this parameter (the docstring's first rule)."""
    name = name.removeprefix("encoder.")  # (MAE's: the ViT inside the masked autoencoder)
    return param.ndim > 1 and name not in NO_WEIGHT_DECAY and not name.endswith("relative_bias.table")


def layer_ids(model: VisionTransformer) -> dict[str, int]:
    """Each parameter's layer, timm's way (the docstring): 0 for the embeddings, i + 1 for block i,
    the last block's for the final norm, and one above it for everything after the blocks."""
    cfg = model.cfg
    depth = cfg.depth
    # timm's `norm` joins the last block; after the pooling it is fc_norm, and SAM's is its neck: the top layer
    final_norm_joins_blocks = not cfg.norm_after_pool and not cfg.window_size
    ids = {}
    for name, _ in model.named_parameters():
        if name.startswith(EMBEDDINGS):
            ids[name] = 0
        elif name.startswith("blocks."):
            ids[name] = int(name.split(".")[1]) + 1
        elif name.startswith("class_attention.blocks."):  # CaiT's: beside the last blocks, as timm counts them
            ids[name] = int(name.split(".")[2]) + depth - cfg.class_attention_blocks + 1
        elif name.startswith("final_norm.") and final_norm_joins_blocks:
            ids[name] = depth
        else:
            ids[name] = None  # after the blocks: the top layer, numbered below
    top = depth + 1 if None in ids.values() else depth
    return {name: top if layer is None else layer for name, layer in ids.items()}


def param_groups(model: VisionTransformer, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW's parameter groups: dicts with `params`, `weight_decay` and `lr_scale` (timm's names;
    the learning rate of a group is the run's times its lr_scale). Without layer_decay, two groups:
    with and without weight decay, at the full rate."""
    ids = layer_ids(model) if layer_decay is not None else {}
    top = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = decays(name, param)
        layer = ids[name] if layer_decay is not None else top
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": 1.0 if layer_decay is None else layer_decay ** (top - layer)})
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None,
                    betas: tuple[float, float] = (0.9, 0.999), fused: bool = False) -> torch.optim.AdamW:
    """AdamW over param_groups, each group's learning rate lr * lr_scale (a scheduler's multiplier
    then scales every group alike, so the ratios between layers hold all run long)."""
    groups = [{**group, "lr": lr * group["lr_scale"]} for group in param_groups(model, weight_decay, layer_decay)]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
