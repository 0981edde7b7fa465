"""Fine-tune a `vit` model: `train(TrainConfig(...))`, or `python -m train` from a shell."""

from train.config import TrainConfig
from train.loop import train

__all__ = ["TrainConfig", "train"]
