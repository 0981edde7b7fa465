"""`create_model`: a ViT by name, optionally with pretrained weights fitted to it."""

import os

from vit.model import DEFAULT_PRETRAINED, VisionTransformer, model_config
from weights.load import fit_to_model, is_none, load_pretrained, resolve


def create_model(
    name: str,
    num_classes: int = 1000,
    img_size: int = 224,
    pretrained: str | os.PathLike | None = None,
) -> VisionTransformer:
    """Build the ViT called `name` (a timm name, e.g. "vit_base_patch16_224").

    pretrained: None or "none" (random init); "default" (timm's ImageNet weights for `name`
        from the Hugging Face hub); a hub id; or a path to a `.safetensors` file in timm's,
        Hugging Face's or our layout, a folder with `model.safetensors`, or a `.pth` from `train`.
    A num_classes other than the file's gives a fresh, zeroed head; an img_size other than the
    file's resamples the position embeddings as timm does. `model.pretrained_cfg` records the
    source and the input normalisation (mean, std) the weights expect.
    """
    cfg = model_config(name, num_classes=num_classes, img_size=img_size)  # validates name/size early
    if is_none(pretrained):
        return VisionTransformer(cfg)
    weights = load_pretrained(locate_pretrained(name, pretrained))
    if weights.layer_norm_eps is not None:
        cfg = model_config(name, num_classes=num_classes, img_size=img_size, layer_norm_eps=weights.layer_norm_eps)
    model = VisionTransformer(cfg)
    model.load_state_dict(fit_to_model(weights.state_dict, model))
    model.pretrained_cfg["source"] = weights.source
    if weights.mean is not None:  # else the model's default, timm's (0.5, 0.5, 0.5)
        model.pretrained_cfg.update(mean=weights.mean, std=weights.std)
    return model


def locate_pretrained(name: str, pretrained: str | os.PathLike | None) -> str:
    """'none', or the local weights file that `pretrained` means for model `name`: "default" is
    timm's hub id for the name, and a hub id is downloaded (or found in the Hugging Face cache)
    now. `train` calls this before decoding any data, so missing weights fail in seconds."""
    if is_none(pretrained):
        return "none"
    if str(pretrained) == "default":
        pretrained = DEFAULT_PRETRAINED[name]
    return str(resolve(pretrained))
