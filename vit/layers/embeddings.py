"""From pixels to tokens, one class per kind, chosen once by `make_patch_embedding`: the paper's
PatchEmbedding, NaFlex's (any size and aspect), and the hybrids' CNN stem (stems.py)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vit import naflex
from vit.config import MAX_TOKENS, ViTConfig
from vit.layers.stems import make_stem, stem_channels
from weights.load import resize_grid


class PatchEmbedding(nn.Module):
    """Cut the image into non-overlapping P x P patches and project each one to a D-dim token.

    Why a convolution: with kernel_size = stride = P the kernel visits each patch exactly once,
    and its output for patch (i, j) is

        out[d, i, j] = b[d] + sum_{c, u, v} W[d, c, u, v] * image[c, i*P + u, j*P + v]

    which is a Linear(C*P*P -> D) applied to the patch flattened in (c, u, v) order, with the
    linear weight equal to W.reshape(D, C*P*P). Same numbers, but one fast conv call instead of a
    rearrange plus matmul (tests/test_model.py checks the equivalence). timm stores it this way.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            cfg.in_channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.projection(images)  # (B, D, H//P, W//P): one D-vector per whole patch
        return rearrange(patches, "b d gh gw -> b (gh gw) d")  # (B, N, D), row-major patch order


class NaFlexPatchEmbedding(nn.Module):
    """NaFlex (SigLIP 2, Tschannen et al. 2025; timm's NaFlexVit, RADIO): each patch's pixels, in
    (row, column, channel) order, through one Linear, plus a learned position table that this
    module keeps at its own grid (16 x 16) and resizes to the input's patch grid at every forward
    pass, so one model reads any size and aspect:

        token[i, j] = W pixels(i, j) + b + resize(table, (rows, columns))[i, j]       (B, N, D)

    With position_keeps_aspect (RADIO, par_gap) the table is resized to a square of the longer
    side and its top-left corner taken: a patch's position does not stretch with the aspect.
    `from_patches` takes the pixels already cut out (NaFlex's own input, vit/naflex.py)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size, self.keeps_aspect, self.resize = cfg.patch_size, cfg.position_keeps_aspect, cfg.position_resize
        self.projection = nn.Linear(cfg.in_channels * cfg.patch_size**2, cfg.embed_dim, bias=cfg.patch_bias)
        self.make_table(cfg)

    def make_table(self, cfg: ViTConfig) -> None:
        side = cfg.position_grid
        self.position_embedding = nn.Parameter(torch.zeros(1, side, side, cfg.embed_dim))  # (1, G, G, D), a map

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, D)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return self.from_patches(naflex.patchify(images, self.patch_size), grid)  # (B, N, P*P*C) pixels

    def from_patches(self, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, rows*columns, P*P*C) pixels, rows first -> (B, N, D) tokens with their positions."""
        tokens = self.projection(pixels)
        return tokens + self.positions(grid).to(tokens.dtype)

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table for a (rows, columns) grid: (1, rows*columns, D)."""
        rows, columns = grid
        if (max(grid) ** 2 if self.keeps_aspect else rows * columns) > MAX_TOKENS:  # before the table is resized
            raise ValueError(f"NaFlex: a {rows} x {columns} patch grid asks for a position table past {MAX_TOKENS} tokens")
        table = rearrange(self.position_embedding, "1 gh gw d -> 1 d gh gw")
        if tuple(table.shape[-2:]) != (rows, columns):
            size = (max(grid), max(grid)) if self.keeps_aspect else grid
            table = resize_grid(table.float(), size, self.resize)[:, :, :rows, :columns]
        return rearrange(table, "1 d r c -> 1 (r c) d")


class FactorizedNaFlexPatchEmbedding(NaFlexPatchEmbedding):
    """NaFlex with a table per axis (timm's parfac): a learned vector per row and one per column,
    each stretched linearly to the grid, and summed: position[i, j] = rows[i] + columns[j]."""

    def make_table(self, cfg: ViTConfig) -> None:
        self.position_rows = nn.Parameter(torch.zeros(1, cfg.position_grid, cfg.embed_dim))  # (1, G, D)
        self.position_columns = nn.Parameter(torch.zeros(1, cfg.position_grid, cfg.embed_dim))

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        lengths = (max(grid), max(grid)) if self.keeps_aspect else grid
        rows, columns = (self.stretched(table, length)[:, :side]
                         for table, length, side in zip((self.position_rows, self.position_columns), lengths, grid))
        return rearrange(rows[:, :, None] + columns[:, None], "1 r c d -> 1 (r c) d")  # (1, N, D)

    @staticmethod
    def stretched(table: torch.Tensor, length: int) -> torch.Tensor:  # (1, G, D) -> (1, length, D)
        if table.shape[1] == length:
            return table
        return F.interpolate(table.float().transpose(1, 2), size=length, mode="linear").transpose(1, 2)


class HybridPatchEmbedding(nn.Module):
    """The ViT paper's hybrids (its section 3.1): a CNN stem's feature map instead of the raw
    image, each P x P patch of the map projected to a token (P = 1 in the paper's R50+ViT-B/16:
    every position of ResNet-50's stride-16 map is a token). stems.py has the stems; MobileCLIP's
    is D wide already, and has no projection.

        image (B, 3, H, W) -> stem (B, C, H/s, W/s) -> projection (B, D, H/sP, W/sP) -> (B, N, D)"""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.stem = make_stem(cfg.stem, cfg.stem_depths, cfg.embed_dim)
        channels = stem_channels(cfg.stem, cfg.stem_depths, cfg.embed_dim)
        self.projection = nn.Identity() if cfg.stem == "mobileclip" else nn.Conv2d(
            channels, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return rearrange(self.projection(self.stem(images)), "b d gh gw -> b (gh gw) d")


def make_patch_embedding(cfg: ViTConfig) -> nn.Module:
    if cfg.naflex:
        return FactorizedNaFlexPatchEmbedding(cfg) if cfg.factorized_positions else NaFlexPatchEmbedding(cfg)
    return HybridPatchEmbedding(cfg) if cfg.stem else PatchEmbedding(cfg)
