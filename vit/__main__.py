"""python -m vit: every supported model name, its family, native size and default weights."""

from vit.families import MODELS
from vit.model import ViTConfig

for name, spec in MODELS.items():
    print(f"{name:40s} {spec.family:14s} {ViTConfig(**spec.config).img_size:4d} px  {spec.weights or '(timm publishes no weights)'}")
