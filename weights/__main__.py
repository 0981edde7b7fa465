"""`python -m weights`: look inside a checkpoint, convert it, export fine-tuned models, print key maps.

    python -m weights inspect FILE                    # its layout, its model, the timm names that load it
    python -m weights convert SRC OUT.safetensors     # SRC: any layout's file or folder, or a hub id
    python -m weights convert SRC OUT.safetensors --to timm [--model NAME]
    python -m weights export vit_cifar10_finetuned.pth --format timm model.safetensors
    python -m weights export vit_cifar10_finetuned.pth --format hf hf_folder/
    python -m weights export vit_cifar10_finetuned.pth --format onnx model.onnx
    python -m weights keymap [--layout timm|torchvision|openclip|jax_vit|big_vision|...]
"""

import json
import sys

from vit.checkpoint import CheckpointError
from weights.files import save_safetensors
from vit.cli import ArgumentParser, first_line
from infer.export import FORMATS, ExportError, timm_state_dict
from infer.export import export as export_model
from vit.families import model_spec
from vit.describe import describe
from weights.layouts import LAYOUTS
from weights.load import HubUnavailable, Pretrained, WeightsError, load_pretrained

SRC_HELP = "a checkpoint in any known layout (.safetensors, .pth, .npz), a folder, or a hub id"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="say what a checkpoint is and which timm names load it")
    inspect.add_argument("src", help=SRC_HELP)
    convert = commands.add_parser("convert", help="write a checkpoint in our layout or timm's")
    convert.add_argument("src", help=SRC_HELP)
    convert.add_argument("out", help="output .safetensors path")
    convert.add_argument("--to", choices=("ours", "timm"), default="ours",
                         help="ours (default; vit.create_model reads it) or timm's (timm.create_model reads it)")
    convert.add_argument("--model", help="the timm name whose keys to write with --to timm "
                                         "(default: the name whose shapes the file has, as inspect finds it)")
    export = commands.add_parser("export", help="write a fine-tuned checkpoint for timm, transformers or ONNX")
    export.add_argument("checkpoint", help="a vit_<name>_finetuned.pth written by train")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="timm: a .safetensors file; hf: a transformers folder; onnx: a .onnx file")
    export.add_argument("out", help="the file (timm, onnx) or folder (hf) to write")
    keymap = commands.add_parser("keymap", help="print a key map: another layout's names -> ours")
    keymap.add_argument("--layout", choices=[name for name, layout in LAYOUTS.items() if layout.table],
                        default="timm", help="whose names (default: timm's)")
    args = parser.parse_args(argv)

    try:
        return COMMANDS[args.command](args)
    except (CheckpointError, ExportError, WeightsError) as error:
        print(f"error: {error.advice('SRC') if isinstance(error, HubUnavailable) else error}", file=sys.stderr)
        return 1


def inspect_command(args) -> int:
    print("\n".join(describe(args.src).lines()))
    return 0


def keymap_command(args) -> int:
    table = LAYOUTS[args.layout].table
    width = max(map(len, table))
    for their_key, our_key in table.items():
        print(f"{their_key:<{width}}  ->  {our_key}")
    return 0


def export_command(args) -> int:
    try:
        how_to_load = export_model(args.checkpoint, args.format, args.out)
    except OSError as error:
        raise CheckpointError(f"cannot write {args.out} ({error.strerror or first_line(error)})") from None
    print(f"exported {args.checkpoint} -> {args.out} ({args.format}); {how_to_load}")
    return 0


def convert_command(args) -> int:
    weights = load_pretrained(args.src)
    if args.to == "timm":
        name = args.model or _name_for(weights, args.src)
        try:
            model_spec(name)
        except ValueError as error:
            raise WeightsError(str(error)) from None
        tensors, metadata = timm_state_dict(weights.state_dict, name), {"model_name": name}
    else:
        tensors, metadata = {k: v.contiguous() for k, v in weights.state_dict.items()}, {"layout": "ours"}
    metadata.update(converted_from=weights.layout, source=weights.source)
    if weights.mean is not None:  # what the original's config said; else the model's default applies
        metadata.update(mean=json.dumps(list(weights.mean)), std=json.dumps(list(weights.std)))
    if weights.layer_norm_eps is not None:
        metadata["layer_norm_eps"] = str(weights.layer_norm_eps)
    if weights.activation is not None:
        metadata["activation"] = json.dumps(weights.activation)
    save_safetensors(tensors, args.out, metadata=metadata)
    print(f"converted {len(tensors)} tensors ({weights.layout} layout) -> {args.out} ({args.to} layout)")
    return 0


def _name_for(weights: Pretrained, src: str) -> str:
    """The timm name whose keys a --to timm conversion writes: the first whose shapes the file has."""
    found = describe(weights)
    names = found.names or found.other_size_names
    if not names:
        raise WeightsError(f"{src}: no timm name has this file's shapes ({found.depth} blocks of width "
                           f"{found.width}); give --model NAME")
    return names[0]


COMMANDS = {"inspect": inspect_command, "convert": convert_command, "export": export_command,
            "keymap": keymap_command}


if __name__ == "__main__":
    sys.exit(main())
