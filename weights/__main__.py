"""`python -m weights`: convert checkpoints to our layout, export fine-tuned models, print key maps.

    python -m weights convert SRC OUT.safetensors     # SRC: a timm or Hugging Face file, folder, or hub id
    python -m weights export vit_cifar10_finetuned.pth --format timm model.safetensors
    python -m weights export vit_cifar10_finetuned.pth --format hf hf_folder/
    python -m weights export vit_cifar10_finetuned.pth --format onnx model.onnx
    python -m weights keymap [--layout timm|hf|hf_dinov2|hf_siglip]
"""

import json
import sys

from vit.checkpoint import CheckpointError, save_safetensors
from vit.cli import ArgumentParser, first_line
from vit.export import FORMATS, ExportError
from vit.export import export as export_model
from weights.convert import KEY_MAPS
from weights.load import HubUnavailable, WeightsError, load_pretrained


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert a checkpoint to our layout")
    convert.add_argument("src", help="timm / Hugging Face .safetensors file, folder, or hub id")
    convert.add_argument("out", help="output .safetensors path")
    export = commands.add_parser("export", help="write a fine-tuned checkpoint for timm, transformers or ONNX")
    export.add_argument("checkpoint", help="a vit_<name>_finetuned.pth written by train")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="timm: a .safetensors file; hf: a transformers folder; onnx: a .onnx file")
    export.add_argument("out", help="the file (timm, onnx) or folder (hf) to write")
    keymap = commands.add_parser("keymap", help="print a key map: another layout's names -> ours")
    keymap.add_argument("--layout", choices=list(KEY_MAPS), default="timm",
                        help="whose names: timm's, or transformers' ViT, Dinov2 or SigLIP (default: timm)")
    args = parser.parse_args(argv)

    if args.command == "export":
        try:
            how_to_load = export_model(args.checkpoint, args.format, args.out)
        except (CheckpointError, ExportError, WeightsError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except OSError as error:
            print(f"error: cannot write {args.out} ({error.strerror or first_line(error)})", file=sys.stderr)
            return 1
        print(f"exported {args.checkpoint} -> {args.out} ({args.format}); {how_to_load}")
        return 0

    if args.command == "keymap":
        table = KEY_MAPS[args.layout]
        width = max(map(len, table))
        for their_key, our_key in table.items():
            print(f"{their_key:<{width}}  ->  {our_key}")
        return 0
    try:
        weights = load_pretrained(args.src)
    except WeightsError as error:
        print(f"error: {error.advice('SRC') if isinstance(error, HubUnavailable) else error}", file=sys.stderr)
        return 1
    metadata = {"layout": "ours", "converted_from": weights.layout, "source": weights.source}
    if weights.mean is not None:  # what the original's config said; else the model's default applies
        metadata.update(mean=json.dumps(list(weights.mean)), std=json.dumps(list(weights.std)))
    if weights.layer_norm_eps is not None:
        metadata["layer_norm_eps"] = str(weights.layer_norm_eps)
    if weights.activation is not None:
        metadata["activation"] = json.dumps(weights.activation)
    tensors = {k: v.contiguous() for k, v in weights.state_dict.items()}
    try:
        save_safetensors(tensors, args.out, metadata=metadata)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"converted {len(tensors)} tensors ({weights.layout} layout) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
