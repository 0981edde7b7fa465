"""Classify images with a fine-tuned checkpoint: `Classifier(path).classify([...])`, or `python -m infer`."""

from infer.images import ImageError, load_image
from infer.predict import Classifier, Prediction

__all__ = ["Classifier", "Prediction", "ImageError", "load_image"]
