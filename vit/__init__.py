"""A from-scratch Vision Transformer that loads timm's (and Hugging Face's) pretrained weights."""

from vit.factory import create_model, locate_pretrained
from vit.model import (DEFAULT_MEAN, DEFAULT_PRETRAINED, DEFAULT_STD, MODEL_CONFIGS, ViTConfig, VisionTransformer,
                       model_config)

__all__ = ["create_model", "locate_pretrained", "model_config", "ViTConfig", "VisionTransformer", "MODEL_CONFIGS",
           "DEFAULT_PRETRAINED", "DEFAULT_MEAN", "DEFAULT_STD"]
