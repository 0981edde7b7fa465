"""`python -m weights convert SRC OUT.safetensors`: write any known ViT checkpoint in our layout.

SRC is a timm or Hugging Face `.safetensors` file, a folder holding one, or a hub id.
"""

import json
import sys

from safetensors.torch import save_file

from weights.load import WeightsError, load_pretrained
from weights.convert import TIMM_TO_OURS
from vit.cli import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert a checkpoint to our layout")
    convert.add_argument("src", help="timm / Hugging Face .safetensors file, folder, or hub id")
    convert.add_argument("out", help="output .safetensors path")
    commands.add_parser("keymap", help="print the timm -> ours key map")
    args = parser.parse_args(argv)

    if args.command == "keymap":
        width = max(map(len, TIMM_TO_OURS))
        for timm_key, our_key in TIMM_TO_OURS.items():
            print(f"{timm_key:<{width}}  ->  {our_key}")
        return 0
    try:
        weights = load_pretrained(args.src)
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    metadata = {"layout": "ours", "converted_from": weights.layout, "source": weights.source}
    if weights.mean is not None:  # what the original's config said; else the model's default applies
        metadata.update(mean=json.dumps(list(weights.mean)), std=json.dumps(list(weights.std)))
    if weights.layer_norm_eps is not None:
        metadata["layer_norm_eps"] = str(weights.layer_norm_eps)
    tensors = {k: v.contiguous() for k, v in weights.state_dict.items()}
    try:
        save_file(tensors, args.out, metadata=metadata)
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    print(f"converted {len(tensors)} tensors ({weights.layout} layout) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
