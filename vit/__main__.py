"""python -m vit: every supported model name, its family, native size and default weights;
--check: whether the installed torch and torchvision work together."""

import sys

from vit.cli import ArgumentParser, install_problem
from vit.families import MODELS
from vit.config import ViTConfig


def size_text(cfg: ViTConfig) -> str:
    """'224' for a square image, '1024x768' (height x width) for another."""
    height, width = cfg.image_shape
    return f"{height}" if height == width else f"{height}x{width}"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m vit", description=__doc__.split(": ", 1)[1].split(";")[0])
    parser.add_argument("--check", action="store_true", help="check the install (torch and torchvision) and exit")
    if parser.parse_args(argv).check:
        problem = install_problem()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        import torch
        import torchvision

        print(f"ok: torch {torch.__version__}, torchvision {torchvision.__version__}")
        return 0
    for name, spec in MODELS.items():
        print(f"{name:40s} {spec.family:14s} {size_text(ViTConfig(**spec.config)):>8s} px  "
              f"{spec.weights or '(timm publishes no weights)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
