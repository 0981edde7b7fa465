"""The `--explain` picture: what the model saw, where its attention flowed, and each head's view.

    [ the input, as the model saw it ] [ attention rollout over it ] [ last block: CLS attention, per head ]
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def picture_path(folder: Path, stem: str, taken: set[Path]) -> Path:
    """folder/stem.png, overwriting the picture an earlier run made of the same input; within one
    run, a second input of the same name gets stem-2.png, then stem-3.png, ... (`taken` holds this
    run's pictures so far, and gets the new one)."""
    path, n = folder / f"{stem}.png", 1
    while path in taken:
        n += 1
        path = folder / f"{stem}-{n}.png"
    taken.add(path)
    return path


def heat_map(rollout: torch.Tensor, size: int, patch_size: int) -> np.ndarray:
    """(grid, grid) -> (size, size): bilinear over the pixels the patches cover, 0 past the last
    whole patch (pixels the model never read, as at 384 px with patches of 14)."""
    covered = rollout.shape[-1] * patch_size
    heat = F.interpolate(rollout[None, None].float().cpu(), size=(covered, covered), mode="bilinear")
    return F.pad(heat, (0, size - covered, 0, size - covered))[0, 0].numpy()


def save_explanation(path: Path, model_input: torch.Tensor, mean, std, rollout: torch.Tensor,
                     heads: torch.Tensor, title: str, patch_size: int, reader: str = "CLS") -> None:
    """model_input (3, S, S) normalised; rollout (grid, grid); heads (H, grid, grid); reader: whose
    attention the heads show ("CLS", or "mean patch-token" for models without a CLS token)."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    seen = (model_input.cpu().float() * std_t + mean_t).clamp(0, 1).permute(1, 2, 0).numpy()
    heat = heat_map(rollout, model_input.shape[-1], patch_size)

    import matplotlib  # here: every `python -m infer` imports this module, few draw (~0.3 s saved)

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    columns = max(1, int(len(heads) ** 0.5 + 0.999))
    rows = -(-len(heads) // columns)
    figure = plt.figure(figsize=(12, 4.2))
    grid = figure.add_gridspec(rows, 2 + columns, width_ratios=[columns, columns] + [1] * columns)
    axis = figure.add_subplot(grid[:, 0])
    axis.imshow(seen)
    axis.set_title("input, as the model saw it", fontsize=9)
    axis = figure.add_subplot(grid[:, 1])
    axis.imshow(seen)
    axis.imshow(heat, cmap="jet", alpha=0.5)
    axis.set_title("attention rollout", fontsize=9)
    for h, head in enumerate(heads):
        axis = figure.add_subplot(grid[h // columns, 2 + h % columns])
        axis.imshow(head.float().cpu().numpy(), cmap="viridis")
        axis.set_title(f"head {h + 1}", fontsize=7)
    for axis in figure.axes:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"{title}    (right: last block, {reader} attention per head)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")  # by name, "..png" would get .png added (its suffix hides)
    plt.close(figure)
