"""A from-scratch Vision Transformer that loads timm's (and Hugging Face's) pretrained weights."""

from vit.factory import create_model, locate_pretrained
from vit.families import MODELS, default_weights, model_config
from vit.config import DEFAULT_MEAN, DEFAULT_STD, ViTConfig
from vit.model import VisionTransformer

__all__ = ["create_model", "locate_pretrained", "model_config", "default_weights", "ViTConfig", "VisionTransformer",
           "MODELS", "DEFAULT_MEAN", "DEFAULT_STD"]
