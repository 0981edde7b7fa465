"""Image batches (uint8) -> model input (normalised float). One function for training's
evaluation and for inference, so that both see exactly the same pixels."""

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache
def _channel_stats(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std tensors on `device`, made once: building them per batch would
    copy from host memory each time, which makes the host wait for the GPU."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1))


def to_model_input(
    images: torch.Tensor,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    source_size: int | None = None,
) -> torch.Tensor:
    """(B, 3, h, w) uint8 -> (B, 3, img_size, img_size) float, normalised.

    source_size: the side of the images the model was fine-tuned on (32 for CIFAR-10). An image
    of another size is first brought to it (antialiased), so a photo is seen at the resolution
    the model learned from, then resized like the training images were.

    Normalisation comes first, at the small size: it is a per-channel affine map and bilinear
    weights sum to 1, so resize(normalise(x)) == normalise(resize(x)), and normalising 32 x 32
    pixels instead of 224 x 224 saves two full passes over the big tensor.
    """
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), images.device)
    x = (images.float() / 255 - mean_t) / std_t
    for size in (source_size, img_size):
        if size and x.shape[-2:] != (size, size):
            shrinking = x.shape[-1] > size or x.shape[-2] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=shrinking)
    return x
