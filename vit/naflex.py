"""NaFlex's own input: images of different sizes and aspects in one batch (timm's NaFlexVit).

Each image is cut into its own grid of patches; the batch packs them into one tensor, padded to
the longest sequence, with each patch's (row, column) and a mask of the real ones:

    patches      (B, N, P*P*C)   pixels of each patch, in (row, column, channel) order
    patch_coord  (B, N, 2)       (row, column) of each patch on its image's grid
    patch_valid  (B, N)          True for an image's patches, False for the padding after them

timm runs the padded batch with an attention mask that keeps the padding out of every softmax
and of the pooling. Here each image runs on its own real patches, which computes the same
numbers (a masked logit adds exactly zero weight) and needs no mask in any block; images of one
grid run together. `pack` makes the input from a list of images.
"""

import torch
from einops import rearrange


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., N, P*P*C): each whole patch's pixels in (row, column, channel)
    order, patches rows first; pixels past the last whole patch are not read."""
    p = patch_size
    rows, columns = images.shape[-2] // p, images.shape[-1] // p
    cropped = images[..., :rows * p, :columns * p]
    return rearrange(cropped, "... c (r p) (w q) -> ... (r w) (p q c)", p=p, q=p)


def pack(images: list[torch.Tensor], patch_size: int) -> dict[str, torch.Tensor]:
    """Images (C, H_i, W_i), each cut into its own (H_i // P) x (W_i // P) grid (a remainder
    unread), packed as NaFlex's input: {"patches", "patch_coord", "patch_valid"}, padded with
    zeros to the longest image."""
    grids = [(image.shape[-2] // patch_size, image.shape[-1] // patch_size) for image in images]
    longest = max(rows * columns for rows, columns in grids)
    channels = images[0].shape[0]
    patches = images[0].new_zeros(len(images), longest, patch_size * patch_size * channels)
    coords = torch.zeros(len(images), longest, 2, dtype=torch.long)
    valid = torch.zeros(len(images), longest, dtype=torch.bool)
    for i, (image, (rows, columns)) in enumerate(zip(images, grids)):
        n = rows * columns
        patches[i, :n] = patchify(image, patch_size)
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
        coords[i, :n] = torch.stack([y.flatten(), x.flatten()], dim=-1)
        valid[i, :n] = True
    return {"patches": patches, "patch_coord": coords, "patch_valid": valid}


def check_input(patches: torch.Tensor, coords: torch.Tensor, valid: torch.Tensor) -> None:
    """ValueError, one line, unless patches (B, L, P*P*C), coordinates (B, L, 2) of integers and the
    mask (B, L) of booleans agree on B and L: checked before anything is computed from them."""
    if not all(isinstance(x, torch.Tensor) for x in (patches, coords, valid)):
        raise ValueError("NaFlex input: patches, patch_coord and patch_valid are tensors")
    if patches.dim() != 3 or coords.dim() != 3 or coords.shape[-1] != 2 or valid.dim() != 2:
        raise ValueError(f"NaFlex input: shapes {tuple(patches.shape)}, {tuple(coords.shape)}, {tuple(valid.shape)} are "
                         "not (B, L, P*P*C), (B, L, 2), (B, L)")
    if not patches.shape[:2] == coords.shape[:2] == valid.shape:
        raise ValueError(f"NaFlex input: patches {tuple(patches.shape[:2])}, patch_coord {tuple(coords.shape[:2])} and "
                         f"patch_valid {tuple(valid.shape)} differ in batch or length")
    if coords.dtype.is_floating_point or coords.dtype == torch.bool or valid.dtype != torch.bool:
        raise ValueError("NaFlex input: patch_coord holds integers, patch_valid booleans")


def grid_of(coords: torch.Tensor, valid: torch.Tensor) -> tuple[int, int]:
    """One image's (rows, columns) from its real patches' coordinates; ValueError (one line) where
    they are not its whole grid, rows first, as NaFlex lays them out."""
    real = coords[valid]  # (n, 2)
    if len(real) == 0:
        raise ValueError("NaFlex input: an image without valid patches")
    if real.amin() < 0:
        raise ValueError("NaFlex input: a negative patch coordinate")
    rows, columns = (int(side) + 1 for side in real.amax(dim=0))
    if len(real) != rows * columns:  # (checked before the grid is laid out: a coordinate of 2e8 costs nothing)
        raise ValueError(f"NaFlex input: {len(real)} valid patches are not a {rows} x {columns} grid")
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    if len(real) != rows * columns or not torch.equal(real.cpu(), torch.stack([y.flatten(), x.flatten()], dim=-1)):
        raise ValueError(f"NaFlex input: {len(real)} valid patches are not a {rows} x {columns} grid in rows-first order")
    return rows, columns


def forward_naflex(model, patches: torch.Tensor | dict, patch_coord: torch.Tensor | None = None,
                   patch_valid: torch.Tensor | None = None) -> torch.Tensor:
    """timm's NaFlexVit.forward on its own input (the dict `pack` makes, or its three tensors):
    (B, num_classes) logits, or pooled features for a backbone. Each image's real patches run
    through the model as one image of its grid would (NaFlexPatchEmbedding.from_patches resizes
    the table to that grid); images of the same grid run as one batch."""
    if isinstance(patches, dict):
        patches, patch_coord, patch_valid = patches["patches"], patches["patch_coord"], patches["patch_valid"]
    if not model.cfg.naflex:
        raise ValueError("forward_naflex: the model's patch embedding is not NaFlex's (a naflexvit_* name)")
    check_input(patches, patch_coord, patch_valid)
    grids = [grid_of(coords, valid) for coords, valid in zip(patch_coord, patch_valid)]
    outputs: list[torch.Tensor | None] = [None] * len(grids)
    for grid in dict.fromkeys(grids):  # each grid once, in order of appearance
        same = [i for i, g in enumerate(grids) if g == grid]
        pixels = torch.stack([patches[i][patch_valid[i]] for i in same])  # (b, rows*columns, P*P*C)
        tokens = model.embed_patches(model.patch_embedding.from_patches(pixels, grid))
        for i, output in zip(same, model.forward_head(model.encode(tokens, grid))):
            outputs[i] = output
    return torch.stack(outputs)
