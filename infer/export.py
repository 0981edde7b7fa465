"""Take a fine-tuned model elsewhere: to timm, to transformers, or to ONNX, with the same outputs.

    export(checkpoint, "timm", "model.safetensors")   # timm.create_model(..., pretrained=True,
                                                      #   pretrained_cfg_overlay=dict(file=..., num_classes=N))
    export(checkpoint, "hf", "folder/")                # AutoModelForImageClassification.from_pretrained(folder)
    export(checkpoint, "onnx", "model.onnx")           # onnxruntime, or python -m infer --checkpoint model.onnx

The timm and transformers layouts come from the key maps in weights/convert.py read backwards
(one table for both directions). Every format carries the class names and the normalisation:
timm's file in its safetensors metadata, transformers' folder as id2label/label2id and a
preprocessor config, the ONNX file in its metadata ("vit_card", the checkpoint's ModelCard).
"""

import json
import math
import os
from pathlib import Path

import torch

from vit.checkpoint import ModelCard, load_model
from weights.files import save_safetensors
from vit.families import model_config, model_spec
from weights.convert import TIMM_FC_NORM, from_ours, timm_table
from weights.layouts import HF_TO_OURS
from weights.load import HF_ACTIVATION_NAMES

FORMATS = ("timm", "hf", "onnx")
HF_FAMILIES = ("vit", "deit")  # architectures that transformers' ViT layout can hold (vit/families.py)
ONNX_CARD_KEY = "vit_card"  # the ONNX metadata entry holding the ModelCard as JSON


HOW_TO_LOAD = {  # one line each, printed after an export
    "timm": "load it with timm.create_model('{name}', num_classes={n}, img_size={size}{activation}, pretrained=True, "
            "pretrained_cfg_overlay=dict(file='{path}', num_classes={n}))",
    "hf": "load it with transformers.AutoModelForImageClassification.from_pretrained('{path}')",
    "onnx": "run it with onnxruntime, or: python -m infer --checkpoint {path} --image IMAGE_OR_FOLDER",
}


class ExportError(Exception):
    """A checkpoint that cannot be exported in that format; the message is one readable line."""


def export(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike) -> str:
    """Write the fine-tuned `checkpoint` (a vit_<name>_finetuned.pth) in format `fmt` at `out`;
    return one line saying how to load the result."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: choose {', '.join(FORMATS)}")
    model, card = load_model(checkpoint)  # CheckpointError (one line) if it is not one
    {"timm": export_timm, "hf": export_hf, "onnx": export_onnx}[fmt](model, card, Path(out))
    # An activation other than the name's (weights from a transformers file that names its own)
    # must be named to timm too, or timm builds the name's and computes something else.
    own = model.cfg.activation != model_config(card.model_name).activation
    return HOW_TO_LOAD[fmt].format(name=card.model_name, n=card.num_classes, size=card.img_size, path=out,
                                   activation=f", act_layer='{model.cfg.activation}'" if own else "")


def timm_state_dict(state_dict: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Our tensors under the keys of timm's `name` (what its hub `model.safetensors` holds)."""
    tensors = {k: v.contiguous() for k, v in from_ours(state_dict, timm_table(model_spec(name).timm_keys)).items()}
    cfg = model_config(name)
    if cfg.window_size and "pos_embed" in tensors:  # SAM keeps its table as a map (1, R, C, D)
        table = tensors["pos_embed"]
        tensors["pos_embed"] = table.reshape(1, math.isqrt(table.shape[1]), -1, table.shape[2])
    if cfg.norm_after_pool:  # timm calls a final norm that follows the pooling fc_norm
        after_pool = {theirs: fc_norm for fc_norm, theirs in TIMM_FC_NORM.items()}
        tensors = {after_pool.get(k, k): v for k, v in tensors.items()}
    return tensors


def export_timm(model, card: ModelCard, out: Path) -> None:
    """A .safetensors file with timm's keys: what timm's hub `model.safetensors` holds."""
    save_safetensors(timm_state_dict(model.state_dict(), card.model_name), out,
              metadata={"model_name": card.model_name, "img_size": str(card.img_size),
                        "class_names": json.dumps(list(card.class_names)),
                        "mean": json.dumps(list(card.mean)), "std": json.dumps(list(card.std))})


def export_hf(model, card: ModelCard, out: Path) -> None:
    """A transformers ViTForImageClassification folder: config.json, model.safetensors and
    preprocessor_config.json (ViTImageProcessor with the model's size and normalisation)."""
    family = model_spec(card.model_name).family
    if family not in HF_FAMILIES:
        raise ExportError(f"{card.model_name} is a {family} model; transformers' ViTForImageClassification holds "
                          f"only the original ViT's architecture ({', '.join(HF_FAMILIES)}): export as timm or onnx")
    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)
    labels = list(card.class_names)
    config = {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "intermediate_size": int(cfg.mlp_ratio * cfg.embed_dim), "hidden_act": HF_ACTIVATION_NAMES[cfg.activation],
        "layer_norm_eps": cfg.layer_norm_eps, "image_size": cfg.img_size, "patch_size": cfg.patch_size,
        "num_channels": cfg.in_channels, "qkv_bias": True, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "torch_dtype": "float32",
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    preprocessor = {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": cfg.img_size, "width": cfg.img_size},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(card.mean), "image_std": list(card.std),
    }
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    tensors = {k: v.contiguous() for k, v in from_ours(model.state_dict(), HF_TO_OURS).items()}
    save_safetensors(tensors, out / "model.safetensors", metadata={"format": "pt"})


def export_onnx(model, card: ModelCard, out: Path, opset: int = 18) -> None:
    """An ONNX graph of the model, input "images" (batch, 3, S, S) with a dynamic batch, output
    "logits", and the ModelCard in its metadata so that `python -m infer` can read it alone."""
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install -e \".[onnx]\"") from None
    example = torch.zeros(2, 3, card.img_size, card.img_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        torch.onnx.export(model.eval(), (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    graph = onnx.load(str(out))
    graph.metadata_props.add(key=ONNX_CARD_KEY, value=json.dumps(card.to_dict()))
    onnx.save(graph, str(out))
