"""The fine-tuned checkpoint, `vit_<name>_finetuned.pth`: what it holds, how it is written, read,
checked and turned back into a model. The one definition; `train` writes it, `infer` and
`vit.create_model(..., pretrained=path)` read it.

A checkpoint is a plain dict, saved with torch.save and read with `weights_only=True`:

    state_dict      the model's weights (our layout, vit/model.py)
    model_name      e.g. "vit_base_patch16_224"       \
    img_size        the model's input side in pixels   |
    num_classes     len(class_names)                   |  the ModelCard: everything besides the
    class_names     the classes, in label order        |  weights that using the model needs
    mean, std       the input normalisation            |
    source_size     side of the small images trained on (32 for CIFAR-10), None for large ones
    layer_norm_eps  1e-6 (timm), 1e-5 (CLIP), 1e-12 (HF) |
    activation      the MLP's: gelu, gelu_tanh, quick_gelu|
    eval_amp        the precision training evaluated in: "bf16", "fp16" or "none"
    architecture    the model's whole ViTConfig as a plain dict /
    metrics, confusion, config   what training measured, and its settings (optional)

The architecture is what the model is rebuilt from, so a checkpoint means the model it was
trained as, whatever vit/families.py says of its name later. Files written before it was
recorded (name, size, eps and activation only) are rebuilt from the family table, as then.

Writes are atomic (weights/files.py).
"""

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from vit.cli import first_line
from vit.families import MODELS, model_config
from vit.config import ACTIVATIONS, ViTConfig
from vit.describe import holds
from vit.model import VisionTransformer
from weights.files import CheckpointError, atomic_save
from weights.load import WeightsError, check_finite, check_tensors, is_layer_norm_eps, load_weights_only, normalisation


# Precision names (the --amp flag's values) -> the dtype torch.autocast runs in (None: plain fp32).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}  # the card's eval_amp


@dataclass(frozen=True)
class ModelCard:
    """What a fine-tuned model needs besides its weights."""

    model_name: str
    img_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source_size: int | None = None  # side of the small images trained on (32 for CIFAR-10)
    layer_norm_eps: float = ViTConfig.layer_norm_eps
    activation: str = ViTConfig.activation  # the MLP's (a transformers SigLIP file brings gelu_tanh)
    eval_amp: str = "none"  # the precision training evaluated in: "bf16", "fp16" or "none"
    architecture: ViTConfig | None = None  # None: a file written before it was recorded (the module docstring)
    trained_accuracy: float | None = None  # the top-1 training measured on its test set, in eval_amp (its metrics)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_config(self) -> ViTConfig:
        """The ViTConfig to rebuild the model from: the recorded architecture, or for an older file
        the family table's entry for its name with its size, classes, eps and activation."""
        if self.architecture is not None:
            return self.architecture
        return model_config(self.model_name, num_classes=self.num_classes, img_size=self.img_size,
                            layer_norm_eps=self.layer_norm_eps, activation=self.activation)

    def to_dict(self) -> dict:
        """Plain types only, so that torch.load(weights_only=True) reads it back."""
        card = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "architecture"}
        card.update(class_names=list(self.class_names), mean=list(self.mean), std=list(self.std),
                    num_classes=self.num_classes)
        if self.architecture is not None:
            card["architecture"] = self.architecture.to_dict()
        return card

    @classmethod
    def from_dict(cls, checkpoint: dict, path) -> "ModelCard":
        """The card held by a checkpoint's entries (or by an exported model's metadata), each
        field checked: CheckpointError, one line naming the field, for what is plainly wrong."""
        missing = [k for k in ("model_name", "img_size", "class_names", "mean", "std") if k not in checkpoint]
        if missing and "mae" in checkpoint:
            raise CheckpointError(f"{path}: an MAE pretraining file (train --objective mae), with no classifier; "
                                  f"fine-tune its encoder first (python -m train --pretrained {path})")
        if missing:
            raise CheckpointError(f"{path}: not a fine-tuned model checkpoint (missing {', '.join(missing)})")
        entries = {f.name: checkpoint[f.name] for f in fields(cls) if f.name in checkpoint}
        _check_card(entries, path)
        try:
            mean, std = normalisation(entries["mean"], entries["std"], path)
        except WeightsError as error:
            raise CheckpointError(str(error)) from None
        entries["architecture"] = _architecture(checkpoint.get("architecture"), path)
        measured = (checkpoint.get("metrics") or {}).get("test_acc") if isinstance(checkpoint.get("metrics"), dict) else None
        if entries.get("trained_accuracy") is None and isinstance(measured, float) and 0.0 <= measured <= 1.0:
            entries["trained_accuracy"] = measured  # (a file from train: its final metrics)
        card = cls(**{**entries, "class_names": tuple(entries["class_names"]), "mean": mean,
                      "std": std})  # stored as lists, kept as tuples (frozen, hashable)
        if checkpoint.get("num_classes", card.num_classes) != card.num_classes:
            raise CheckpointError(f"{path}: weights do not fit the card (num_classes {checkpoint['num_classes']}, "
                                  f"but {card.num_classes} class names)")
        recorded = card.architecture
        if recorded is not None and (recorded.num_classes != card.num_classes or recorded.image_shape != (card.img_size,) * 2):
            raise CheckpointError(f"{path}: its architecture ({recorded.num_classes} classes, {recorded.img_size} px) "
                                  f"does not fit its card ({card.num_classes} classes, {card.img_size} px)")
        spec = MODELS.get(card.model_name)  # (a name no longer in the table: the architecture alone rebuilds it)
        named = model_config(card.model_name) if recorded is not None and spec is not None else None
        if named is not None and named.embed_dim != recorded.embed_dim:  # (the patch side may be train --patch-size's)
            raise CheckpointError(f"{path}: weights do not fit {card.model_name} (its architecture has width "
                                  f"{recorded.embed_dim}, the name {named.embed_dim})")
        return card


def _check_card(entries: dict, path) -> None:
    """Each card field of the type and range it must have, or CheckpointError naming it."""
    def positive_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    names = entries["class_names"]
    checks = {
        "model_name": (isinstance(entries.get("model_name"), str), "a model name (a string)"),
        "img_size": (positive_int(entries.get("img_size")), "a positive whole number of pixels"),
        "class_names": (isinstance(names, (list, tuple)) and len(names) > 0 and all(isinstance(n, str) for n in names),
                        "a list of class names (strings)"),
        "source_size": (entries.get("source_size") is None or positive_int(entries.get("source_size")),
                        "a positive whole number of pixels, or None"),
        "layer_norm_eps": (is_layer_norm_eps(entries.get("layer_norm_eps", 1e-6)), "a small positive number"),
        "activation": (entries.get("activation", "gelu") in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
        "eval_amp": (entries.get("eval_amp", "none") in AMP_DTYPES, f"one of {', '.join(AMP_DTYPES)}"),
        "trained_accuracy": (entries.get("trained_accuracy") is None or (isinstance(entries["trained_accuracy"], float)
                             and 0.0 <= entries["trained_accuracy"] <= 1.0), "a fraction from 0 to 1, or None"),
    }
    for name, (fine, what) in checks.items():
        if not fine:
            raise CheckpointError(f"{path}: its card's {name} is {str(entries.get(name))[:60]!r} "
                                  f"({type(entries.get(name)).__name__}), not {what}")


def _architecture(recorded, path) -> ViTConfig | None:
    """A checkpoint's recorded ViTConfig (None where an older file has none); CheckpointError, one
    line, for one this version cannot build."""
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{path}: its architecture is a {type(recorded).__name__}, not a dict of ViTConfig fields")
    try:
        return ViTConfig.from_dict(recorded)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot rebuild its model ({first_line(error)})") from None


def safe_load(path: str | os.PathLike) -> dict:
    """A checkpoint written by this project (a fine-tuned model or a last.pt), read with
    weights.load_weights_only: tensors and plain containers, never pickled code."""
    try:
        checkpoint = load_weights_only(path)
    except WeightsError as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a checkpoint written by this project (no state_dict)")
    return checkpoint


def save_model(path: str | os.PathLike, model: VisionTransformer | dict, card: ModelCard, **extra) -> None:
    """Write a fine-tuned checkpoint: the weights (a model, or its state_dict as gathered
    elsewhere), the card, and `extra` (metrics, confusion, config: plain types)."""
    weights = model if isinstance(model, dict) else model.state_dict()
    atomic_save({"state_dict": weights, **card.to_dict(), **extra}, path)


def not_a_fine_tuned_model(path: Path) -> str | None:
    """What a path given as a fine-tuned checkpoint is instead, and what to do with it (one line);
    None where it may be one."""
    if path.is_dir():
        finetuned = sorted(path.glob("*_finetuned.pth"))
        if finetuned:
            return f"{path}: a run folder; give the fine-tuned model in it: {finetuned[0]}"
        if (path / "model.safetensors").is_file():
            return (f"{path}: a folder of pretrained weights, not a fine-tuned model; fine-tune them first "
                    f"(python -m train --pretrained {path})")
        return f"{path}: a folder, not a fine-tuned model (the vit_<name>_finetuned.pth that train writes)"
    if path.suffix == ".safetensors" and path.is_file():
        return (f"{path}: a .safetensors weights file (timm's, Hugging Face's or a converted one), not a fine-tuned "
                f"model; fine-tune it first (python -m train --pretrained {path})")
    return None


MAX_TABLE_BYTES = 1 << 30  # buffers a model computes for itself (relative position indices, ...) beyond its weights


def check_fits(cfg: ViTConfig, state_dict: dict, name: str, path) -> None:
    """The model `cfg` describes, built on the meta device (no memory taken), against the file's
    tensors: every key and shape the same, and no more than MAX_TABLE_BYTES of tables computed
    beside them. CheckpointError, one line, saying which model the file holds where they differ."""
    with torch.device("meta"):
        planned = VisionTransformer(cfg)
    expected = {key: tuple(value.shape) for key, value in planned.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    if expected != found:  # said as load_state_dict says it, shortly, with what the file holds
        wrong = [f"size mismatch for {key}: file {found[key]} vs model {expected[key]}"
                 for key in expected if key in found and expected[key] != found[key]]
        missing, extra = [k for k in expected if k not in found], [k for k in found if k not in expected]  # (in order)
        parts = ([f"Missing key(s): {', '.join(missing[:3])}" + (", ..." if len(missing) > 3 else "")] if missing else [])
        parts += [f"Unexpected key(s): {', '.join(extra[:3])}" + (", ..." if len(extra) > 3 else "")] if extra else []
        parts += wrong[:2]
        raise CheckpointError(f"{path}: weights do not fit {name} ({'; '.join(parts)}); the file holds "
                              f"{holds(state_dict)}")  # (python -m weights inspect's words)
    tables = sum(buffer.numel() * buffer.element_size() for buffer in planned.buffers())
    if tables > MAX_TABLE_BYTES:
        raise CheckpointError(f"{path}: its architecture asks for {tables / 2**30:.1f} GiB of position tables at "
                              f"img_size {cfg.img_size}, more than its weights justify")


def load_model(path: str | os.PathLike) -> tuple[VisionTransformer, ModelCard]:
    """A fine-tuned checkpoint turned back into its model (eval mode) and card; CheckpointError
    (one line) if it is not one, saying what it is where that is clear."""
    other = not_a_fine_tuned_model(Path(path))
    if other is not None:
        raise CheckpointError(other)
    checkpoint = safe_load(path)
    card = ModelCard.from_dict(checkpoint, path)
    try:
        check_finite(check_tensors(checkpoint["state_dict"], path), path)
    except WeightsError as error:
        raise CheckpointError(str(error)) from None
    try:
        cfg = card.build_config()
    except ValueError as error:  # a field out of range (vit/config.py's RULES), named
        raise CheckpointError(f"{path}: cannot rebuild its model ({first_line(error)})") from None
    check_fits(cfg, checkpoint["state_dict"], card.model_name, path)  # before any memory is taken
    model = VisionTransformer(cfg)
    model.load_state_dict(checkpoint["state_dict"])
    model.pretrained_cfg.update(source=str(path), mean=card.mean, std=card.std)
    return model.eval(), card
