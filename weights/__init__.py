"""Pretrained weights: key maps from timm / Hugging Face layouts to ours, loading and fitting."""

from weights.convert import HF_TO_OURS, TIMM_TO_OURS, convert_hf, convert_timm, detect_layout, from_ours, to_ours
from weights.load import Pretrained, WeightsError, fit_to_model, load_pretrained, resample_position_embedding

__all__ = [
    "TIMM_TO_OURS", "HF_TO_OURS", "convert_timm", "convert_hf", "detect_layout", "to_ours", "from_ours",
    "Pretrained", "WeightsError", "load_pretrained", "fit_to_model", "resample_position_embedding",
]
