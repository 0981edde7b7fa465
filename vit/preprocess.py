"""Image batches (uint8) -> model input (normalised float). One function for training's
evaluation and for inference, so that both see exactly the same pixels."""

import torch
import torch.nn.functional as F


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
    """
    x = images.float().div_(255)
    if source_size and x.shape[-2:] != (source_size, source_size):
        x = F.interpolate(x, size=(source_size, source_size), mode="bilinear", antialias=True)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True)
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
