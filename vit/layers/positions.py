"""Where a ViT's positions come from, one class per scheme, each chosen once by a make_* function:

    a learned table added to the tokens    AddPositions (the paper's), AddPositionsToPatches,
                                           NoPositionTable
    a rotation of q and k per block (RoPE) NoRope, AxialRope, DinoV3Rope, MixedRope
    a bias on the attention logits         NoRelativeBias, RelativePositionBias (BEiT),
                                           RelativePositionMlp (relpos), DecomposedRelativePositions (SAM)

All of them meet the logits in one line of MultiHeadSelfAttention (attention.py):

    out = softmax(rotation(q) rotation(k)^T / sqrt(head_dim) + relative_bias) v     (B, heads, T, hd)

Resizing a learned table to another image size is weights/load.py's (`resize_grid`)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vit.config import ViTConfig


# --- The learned table added to the tokens (the original), where it goes: VisionTransformer.add_positions.


class AddPositions(nn.Module):
    """The original: a position vector for every token, the CLS token included."""

    def forward(self, prefix: list[torch.Tensor], patches: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return torch.cat([*prefix, patches], dim=1) + table  # (B, prefix+N, D)


class AddPositionsToPatches(nn.Module):
    """DeiT-III, registers, FlexiViT: the table covers the patches only; prefix tokens get none."""

    def forward(self, prefix: list[torch.Tensor], patches: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return torch.cat([*prefix, patches + table], dim=1)


class NoPositionTable(nn.Module):
    """BEiT, DINOv3, most RoPE models: no table; positions enter attention instead."""

    def forward(self, prefix: list[torch.Tensor], patches: torch.Tensor, table: None) -> torch.Tensor:
        return torch.cat([*prefix, patches], dim=1)


def make_add_positions(cfg: ViTConfig) -> nn.Module:
    if not cfg.absolute_positions:
        return NoPositionTable()
    return AddPositions() if cfg.positions_cover_prefix else AddPositionsToPatches()


# --- RoPE: a rotation of q and k per block, handed to attention (VisionTransformer.rope).


class Rotation:
    """What a block's attention applies to q and to k, (B, H, T, hd) -> (B, H, T, hd). In the
    original ViT the identity: positions were added to the tokens before the blocks. A rotary
    scheme (RoPE, below the model) hands each block a subclass carrying its angles' cos and sin."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


IDENTITY = Rotation()


class PairRotation(Rotation):
    """Rotate every channel pair (a, b) of each patch token by its angle:

        (a, b) -> (a cos angle - b sin angle, a sin angle + b cos angle)

    Pairs are neighbouring channels (2j, 2j + 1); prefix tokens (CLS, registers) are not rotated.
    cos, sin: (N, hd/2), or (H, N, hd/2) where each head has its own angles (mixed RoPE)."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, prefix: int):
        self.cos, self.sin, self.prefix = cos, sin, prefix

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, :, self.prefix:].float()  # (B, H, N, hd)
        a, b = self.pairs(patches)
        rotated = self.join(a * self.cos - b * self.sin, a * self.sin + b * self.cos)
        return torch.cat([x[:, :, :self.prefix], rotated.to(x.dtype)], dim=2)

    def pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., 0::2], x[..., 1::2]

    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([a, b], dim=-1).flatten(-2)


class HalfRotation(PairRotation):
    """DINOv3's pairing: pair j is channels (j, j + hd/2), the two halves of the head."""

    def pairs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.chunk(2, dim=-1)

    def join(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=-1)


class NoRope(nn.Module):
    """Positions are not rotary: every block's rotation is the identity."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.depth = cfg.depth

    def rotations(self, grid: tuple[int, int]) -> list[Rotation]:
        return [IDENTITY] * self.depth


class RotaryPositions(nn.Module):
    """2D rotary position embedding (RoPE; Su et al. 2021, "RoFormer"), as EVA-02, DINOv3, PE and
    RoPE-ViT use it. Instead of adding a position vector to each token, q and k of each patch are
    rotated: channels are taken in pairs (a, b), and pair j of the patch at (x, y) is turned by
    angle_j = position_j * frequency_j (PairRotation). A rotation by angle_i on the query and
    angle_j on the key leaves q . k depending only on angle_i - angle_j: the logits see where
    patches are relative to each other. In 2D the head_dim / 2 pairs are split in two: the first
    half of the frequencies follows one axis, the second half the other (y then x in EVA-02 and
    DINOv3, x then y in PE and RoPE-ViT: `rope_xy`). The subclasses differ in positions and
    frequencies: AxialRope, DinoV3Rope, MixedRope."""

    rotation_class = PairRotation

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg

    def rotations(self, grid: tuple[int, int]) -> list[Rotation]:
        """One rotation per block for a (rows, columns) patch grid, computed once per forward."""
        angles = self.angles(grid)  # (N, head_dim / 2)
        return [self.rotation_class(angles.cos(), angles.sin(), self.cfg.num_prefix_tokens)] * self.cfg.depth

    def grid_angles(self, grid: tuple[int, int], ladder: torch.Tensor) -> torch.Tensor:
        """Every patch's angles (N, head_dim / 2) for a frequency `ladder` (n,) per axis: the first
        axis's n angles, then the second's; patches in row-major order, as the tokens."""
        y, x = torch.meshgrid(self.coordinates(grid[0], ladder.device), self.coordinates(grid[1], ladder.device),
                              indexing="ij")  # (rows, columns) each
        first, second = (x, y) if self.cfg.rope_xy else (y, x)
        position = torch.stack([first.flatten(), second.flatten()], dim=-1)[:, :, None]  # (N, 2, 1)
        return (position * ladder).flatten(1)  # (N, 2n)


class AxialRope(RotaryPositions):
    """EVA-02, PE, RoPE-ViT: position = patch index (+ rope_offset, rescaled so that the grid spans
    rope_reference_grid when set), frequency_i = temperature^(-i / n), i < n = head_dim / 4."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        n = cfg.head_dim // 4  # frequencies per axis
        self.register_buffer("frequency", cfg.rope_temperature ** -(torch.arange(n).float() / n), persistent=False)

    def coordinates(self, side: int, device: torch.device) -> torch.Tensor:
        coords = torch.arange(side, device=device).float() + self.cfg.rope_offset  # (side,) patch indices
        if self.cfg.rope_reference_grid:  # EVA: the grid spans the pretraining grid, whatever its size
            coords = coords / side * self.cfg.rope_reference_grid
        return coords

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.grid_angles(grid, self.frequency)


class DinoV3Rope(RotaryPositions):
    """DINOv3: position = patch centre in [-1, 1] (any grid spans the same range), frequency_i =
    2 pi / temperature^(4 i / head_dim); pairs are channels (j, j + head_dim / 2)."""

    rotation_class = HalfRotation

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        n = cfg.head_dim // 4
        self.register_buffer("frequency", 2 * math.pi / cfg.rope_temperature ** (2 * torch.arange(n).float() /
                                                                                 (cfg.head_dim // 2)), persistent=False)

    def coordinates(self, side: int, device: torch.device) -> torch.Tensor:
        return 2.0 * ((torch.arange(0.5, side, device=device).float() + self.cfg.rope_offset) / side) - 1.0  # centres

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.grid_angles(grid, self.frequency)


class MixedRope(RotaryPositions):
    """RoPE-ViT mixed (Heo et al. 2024): angle = x * fx + y * fy with learned fx, fy per block,
    head and pair, so a pair can follow any direction, not just x or y."""

    def __init__(self, cfg: ViTConfig):
        super().__init__(cfg)
        self.freqs = nn.Parameter(torch.zeros(2, cfg.depth, cfg.num_heads, cfg.head_dim // 2))  # (2 axes, depth, H, hd/2)

    def reset_parameters(self) -> None:
        """Mixed RoPE starts (as in its paper) from the axial ladder turned by a random angle per
        block and head: fx = m cos(theta), then m cos(theta + pi/2); fy likewise with sines."""
        cfg = self.cfg
        magnitude = cfg.rope_temperature ** -(torch.arange(0, cfg.head_dim, 4).float() / cfg.head_dim)  # (n,)
        theta = torch.rand(cfg.depth, cfg.num_heads, 1) * 2 * math.pi
        fx = torch.cat([magnitude * torch.cos(theta), magnitude * torch.cos(theta + math.pi / 2)], dim=-1)
        fy = torch.cat([magnitude * torch.sin(theta), magnitude * torch.sin(theta + math.pi / 2)], dim=-1)
        with torch.no_grad():
            self.freqs.copy_(torch.stack([fx, fy]))  # (2, depth, heads, head_dim / 2)

    def angles(self, grid: tuple[int, int]) -> torch.Tensor:
        """(depth, H, N, head_dim / 2): every block and head its own angles."""
        rows, columns = grid
        device = self.freqs.device
        y, x = torch.meshgrid(torch.arange(rows, device=device).float(), torch.arange(columns, device=device).float(),
                              indexing="ij")
        x, y = x.flatten(), y.flatten()  # (N,) each, patch indices
        fx, fy = self.freqs.float()  # (depth, H, hd/2) each
        return x[:, None] * fx[..., None, :] + y[:, None] * fy[..., None, :]

    def rotations(self, grid: tuple[int, int]) -> list[Rotation]:
        angles = self.angles(grid)
        prefix = self.cfg.num_prefix_tokens
        return [PairRotation(block.cos(), block.sin(), prefix) for block in angles]


def make_rope(cfg: ViTConfig) -> nn.Module:
    return {None: NoRope, "axial": AxialRope, "dinov3": DinoV3Rope, "mixed": MixedRope}[cfg.rope](cfg)


# --- A bias on the attention logits, in attention's `relative_bias` slot.


class NoRelativeBias(nn.Module):
    """The original ViT adds nothing to the attention logits (BEiT: RelativePositionBias, below)."""

    def forward(self, dtype: torch.dtype) -> None:
        return None


class RelativePositionBias(nn.Module):
    """BEiT's relative position bias (Bao et al. 2021, after Swin): a learned number per head for
    every offset (dy, dx) between two patches, added to the attention logits:

        logits[h, i, j] += table[index[i, j], h],   index[i, j] = (dy + G-1) * (2G-1) + (dx + G-1)

    (2G-1)^2 offsets, plus three entries for the CLS token: CLS -> patch, patch -> CLS, CLS -> CLS."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        g = cfg.grid_size
        offsets = (2 * g - 1) ** 2
        self.table = nn.Parameter(torch.zeros(offsets + 3, cfg.num_heads))  # (offsets + 3, H)
        y, x = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        y, x = y.flatten(), x.flatten()  # (N,) each, row-major as the tokens
        dy, dx = y[:, None] - y[None, :] + g - 1, x[:, None] - x[None, :] + g - 1  # (N, N), from 0
        index = torch.empty(1 + g * g, 1 + g * g, dtype=torch.long)  # the CLS token first
        index[1:, 1:] = dy * (2 * g - 1) + dx
        index[0, :], index[:, 0], index[0, 0] = offsets, offsets + 1, offsets + 2  # CLS->, ->CLS, CLS->CLS
        self.register_buffer("index", index, persistent=False)

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        return rearrange(self.table[self.index], "i j h -> 1 h i j").to(dtype)  # (1, H, T, T)


class OffsetMlp(nn.Module):
    """(dy, dx), log-spaced -> a bias per head: Linear(2, hidden), ReLU, Linear(hidden, heads)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.fc1 = nn.Linear(2, hidden)
        self.fc2 = nn.Linear(hidden, heads)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:  # (..., 2) -> (..., heads)
        return self.fc2(F.relu(self.fc1(offsets)))


class RelativePositionMlp(nn.Module):
    """timm's relpos ViTs (after Swin v2's continuous position bias, timm's "cr" mode): the bias
    for two patches comes from an MLP of their offset, log-spaced so that near offsets are told
    apart finely and far ones coarsely:

        logits[h, i, j] += mlp(sign(d) * ln(1 + |d|))[h],   d = (dy, dx) from patch j to patch i

    The MLP has no table of offsets to resize: any grid gets its biases from the same weights.
    Prefix tokens (a CLS token) get no bias (a zero row and column)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        rows, columns = cfg.grid_shape
        self.prefix, self.num_heads = cfg.num_prefix_tokens, cfg.num_heads
        self.mlp = OffsetMlp(cfg.relative_position_mlp, cfg.num_heads)
        dy, dx = torch.meshgrid(torch.arange(-(rows - 1), rows).float(), torch.arange(-(columns - 1), columns).float(),
                                indexing="ij")  # every offset: (2R-1, 2C-1) each
        offsets = torch.stack([dy, dx], dim=-1)
        self.register_buffer("log_offsets", offsets.sign() * torch.log1p(offsets.abs()), persistent=False)  # (2R-1, 2C-1, 2)
        y, x = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
        y, x = y.flatten(), x.flatten()  # (N,) each, row-major as the tokens
        index = (y[:, None] - y[None, :] + rows - 1) * (2 * columns - 1) + (x[:, None] - x[None, :] + columns - 1)
        self.register_buffer("index", index, persistent=False)  # (N, N): patch pair -> its offset's row

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        per_offset = self.mlp(self.log_offsets).reshape(-1, self.num_heads)  # ((2R-1)(2C-1), H)
        bias = rearrange(per_offset[self.index], "i j h -> h i j")  # (H, N, N)
        return F.pad(bias, (self.prefix, 0, self.prefix, 0))[None].to(dtype)  # (1, H, T, T)


def make_relative_bias(cfg: ViTConfig) -> nn.Module:
    if cfg.relative_position_bias:
        return RelativePositionBias(cfg)
    per_block = cfg.relative_position_mlp and not cfg.relative_position_shared  # shared: the model sets it
    return RelativePositionMlp(cfg) if per_block else NoRelativeBias()


class DecomposedRelativePositions(nn.Module):
    """SAM (after MViTv2, Li et al. 2022): a learned vector per row offset and one per column
    offset, which each query reads into a bias on its logits. For query patch i and key patch j
    of an R x C grid,

        bias[i, j] = q_i . rows[row_i - row_j + R - 1] + q_i . columns[col_i - col_j + C - 1]

    (2R-1) + (2C-1) vectors instead of BEiT's (2R-1)(2C-1) per-head numbers, and the bias depends
    on the query's content, not only on where the patches are."""

    def __init__(self, grid: tuple[int, int], head_dim: int):
        super().__init__()
        rows, columns = grid
        self.grid = grid
        self.rows = nn.Parameter(torch.zeros(2 * rows - 1, head_dim))  # (2R-1, hd)
        self.columns = nn.Parameter(torch.zeros(2 * columns - 1, head_dim))  # (2C-1, hd)
        for name, side in (("row_offsets", rows), ("column_offsets", columns)):
            index = torch.arange(side)
            self.register_buffer(name, index[:, None] - index[None, :] + side - 1, persistent=False)  # (side, side)

    def forward(self, q: torch.Tensor) -> torch.Tensor:  # (B, H, R*C, hd) -> (B, H, R*C, R*C)
        q = rearrange(q, "b h (r c) d -> b h r c d", r=self.grid[0])
        by_row = torch.einsum("bhrcd,rkd->bhrck", q, self.rows[self.row_offsets].to(q.dtype))  # key rows k
        by_column = torch.einsum("bhrcd,ckd->bhrck", q, self.columns[self.column_offsets].to(q.dtype))  # key columns k
        bias = by_row[..., :, None] + by_column[..., None, :]  # (B, H, R, C, key rows, key columns)
        return rearrange(bias, "b h r c kr kc -> b h (r c) (kr kc)")
