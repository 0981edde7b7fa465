"""`create_model`: a ViT by name, optionally with pretrained weights fitted to it."""

import os
from dataclasses import replace

import torch

from vit.config import ViTConfig
from vit.describe import holds
from vit.families import default_weights, model_config, model_spec, split_name
from vit.model import VisionTransformer
from weights.load import Pretrained, WeightsError, first_line, fit_to_model, is_none, load_pretrained, resolve


def create_model(
    name: str,
    num_classes: int | None = None,
    img_size: int | None = None,
    pretrained: str | os.PathLike | None = None,
    **overrides,
) -> VisionTransformer:
    """Build the ViT called `name`: a timm name (vit/families.py lists them), e.g.
    "vit_base_patch16_224", "deit3_small_patch16_224", "vit_small_patch14_dinov2", optionally
    with timm's tag of the weights meant: "vit_base_patch16_clip_224.openai".

    num_classes: None keeps the weights' classifier (0 = none: a backbone such as DINOv2 returns
        its pooled features), or the name's default without weights; another count gives a
        fresh, zeroed head.
    img_size: None is the name's native size (518 for DINOv2), or a fine-tuned checkpoint's own;
        another size resamples the position embeddings as timm does.
    pretrained: None or "none" (random init); "default" (timm's weights for `name`, or for its
        tag, from the Hugging Face hub); a hub id; or a path: a `.safetensors`, `.pth` or `.npz`
        file in any layout weights/layouts.py knows (timm, torchvision, OpenCLIP, transformers,
        Meta's DINO releases, the JAX releases, ours), a folder with `model.safetensors`, or a
        `.pth` from `train`. The file is found, read and converted once, then fitted to the model.
    overrides: other ViTConfig fields (e.g. depth=2 for a quick test), as timm.create_model takes.
    `model.pretrained_cfg` records the source and the input normalisation (mean, std).
    """
    architecture, _ = split_name(name)
    spec = model_spec(architecture)  # an unknown name fails here
    fields = dict(overrides, **({"img_size": img_size} if img_size else {}))
    model_config(architecture, **fields)  # a bad size fails before any download
    if is_none(pretrained):
        model = VisionTransformer(model_config(architecture, **fields, **_classes(num_classes)))
        model.pretrained_cfg.update(mean=spec.mean, std=spec.std)
        return model
    weights = load_pretrained(_weights_meant(name, pretrained))
    if img_size is None and "img_size" in weights.extra:  # a fine-tuned .pth: the size it was trained at
        fields["img_size"] = weights.extra["img_size"]
    if num_classes is None:  # the weights' own classifier, or none (a backbone's file)
        head = weights.state_dict.get("head.weight")
        num_classes = 0 if head is None else head.shape[0]
    if weights.layer_norm_eps is not None:
        fields["layer_norm_eps"] = weights.layer_norm_eps
    if weights.activation is not None:  # a transformers config.json names it (SigLIP's: gelu_tanh)
        fields["activation"] = weights.activation
    if weights.position_resize and "position_resize" not in overrides:  # as the file's own code resizes its table
        fields["position_resize"] = weights.position_resize
    cfg = _config(architecture, weights, dict(fields, num_classes=num_classes))
    with torch.device("meta"):  # the file's shapes against the model's, before any memory is taken
        planned = VisionTransformer(cfg)
    try:
        fit_to_model(weights.state_dict, planned)
    except WeightsError as error:
        detail = first_line(error).removeprefix("weights do not fit the model: ")
        raise WeightsError(f"weights do not fit {name}: the file holds {holds(weights.state_dict)}: {detail}") from None
    model = VisionTransformer(cfg)
    model.load_state_dict(fit_to_model(weights.state_dict, model))
    model.pretrained_cfg["source"] = weights.source
    model.pretrained_cfg.update(mean=weights.mean or spec.mean, std=weights.std or spec.std)
    return model


def _config(architecture: str, weights: Pretrained, fields: dict) -> ViTConfig:
    """The model's config: the family table's for the name, or, for a fine-tuned .pth of this
    name that records its architecture (vit/checkpoint.py), that one, as it was trained."""
    recorded = weights.extra.get("architecture")
    if recorded is None or weights.extra.get("model_name") != architecture:
        return model_config(architecture, **fields)
    try:
        return replace(ViTConfig.from_dict(recorded), **fields)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{weights.source}: cannot rebuild its model ({first_line(error)})") from None


def _classes(num_classes: int | None) -> dict:
    return {} if num_classes is None else {"num_classes": num_classes}


def locate_pretrained(name: str, pretrained: str | os.PathLike | None) -> str:
    """'none', or the local weights file that `pretrained` means for model `name`: "default" is
    timm's hub id for the name (or its tag), and a hub id is downloaded (or found in the Hugging
    Face cache) now. `train` calls this before decoding any data, so missing weights fail in seconds."""
    if is_none(pretrained):
        return "none"
    return str(resolve(_weights_meant(name, pretrained)))


def _weights_meant(name: str, pretrained: str | os.PathLike):
    """"default" is timm's hub id for the name (or its tag); anything else is itself."""
    return default_weights(name) if str(pretrained) == "default" else pretrained
