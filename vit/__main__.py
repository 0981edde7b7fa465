"""python -m vit: every supported model name, its family, native size and default weights."""

from vit.cli import ArgumentParser
from vit.families import MODELS
from vit.model import ViTConfig


def size_text(cfg: ViTConfig) -> str:
    """'224' for a square image, '1024x768' (height x width) for another."""
    height, width = cfg.image_shape
    return f"{height}" if height == width else f"{height}x{width}"


def main(argv: list[str] | None = None) -> None:
    ArgumentParser(prog="python -m vit", description=__doc__.split(": ", 1)[1]).parse_args(argv)
    for name, spec in MODELS.items():
        print(f"{name:40s} {spec.family:14s} {size_text(ViTConfig(**spec.config)):>8s} px  "
              f"{spec.weights or '(timm publishes no weights)'}")


if __name__ == "__main__":
    main()
