"""Images in, predictions out: reading an image into the model (images.py, preprocess.py), `Classifier(path)
.classify([...])` or `python -m infer`, the precision rule (precision.py), the compiled CPU path
(prepare.py, compiled.py, cache.py), export, the explorer and the paper's figures."""

from infer.images import ImageError, load_image
from infer.predict import Classifier, Prediction

__all__ = ["Classifier", "Prediction", "ImageError", "load_image"]
