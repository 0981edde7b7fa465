"""The CNN stems of the ViT paper's hybrids (timm's vision_transformer_hybrid): instead of cutting
the image into patches, a ResNet's first stages turn it into a feature map, and each position of
that map becomes a token (embeddings.py's HybridPatchEmbedding projects it to D):

    image (B, 3, 224, 224) -> stem (B, 1024, 14, 14) -> 1x1 projection -> tokens (B, 196, D)

The paper's R50+ViT-B/16 (its Table 2) is BitStem((3, 4, 9)): ResNet-50's first three stages,
stride 16. Three kinds, each a class:

    BitStem         BiT's ResNet (Kolesnikov et al. 2020), as the paper's hybrids use it: weight-
                    standardised convolutions with TensorFlow's SAME padding, GroupNorm (32 groups)
    ResNetDStem     ResNet-D (He et al. 2019, "Bag of Tricks"): a deep stem of three 3x3 convolutions,
                    BatchNorm, and shortcuts that average-pool before their 1x1 convolution
    ConvStem        MobileCLIP's: three strided convolutions (4, 2, 2), BatchNorm and GELU between

A stage is a list of Bottleneck blocks; each stage after the first halves the map and doubles
the channels (256, 512, 1024, 2048), the first block of each stage has a projection shortcut.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

STAGE_CHANNELS = (256, 512, 1024, 2048)


def same_padding(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's SAME padding, which the paper's JAX code used: the output has ceil(size /
    stride) positions, and the padding that takes splits as evenly as it can, the odd one at the
    bottom and right: pad = max((ceil(size / stride) - 1) * stride + kernel - size, 0)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad's order: the last axis (width) first
        pad = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [pad // 2, pad - pad // 2]
    return F.pad(x, pads, value=value)


class StdConv2dSame(nn.Conv2d):
    """BiT's convolution: each filter standardised (zero mean, unit variance over its inputs)
    before it is applied, w' = (w - mean(w)) / sqrt(var(w) + 1e-8), with SAME padding. With
    GroupNorm after it, it trains as well as BatchNorm without batch statistics."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each filter as one "channel" of a batch-norm over its C*k*k inputs: the same formula, and
        # the same kernel timm uses, so the numbers match its to the last bit rather than to 1e-5.
        filters = self.weight.reshape(1, self.out_channels, -1)  # (1, filters, C*k*k)
        weight = F.batch_norm(filters, None, None, training=True, momentum=0.0, eps=1e-8).reshape_as(self.weight)
        return F.conv2d(same_padding(x, self.kernel_size[0], self.stride[0]), weight, None, self.stride)


def bit_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Module:
    return StdConv2dSame(in_channels, out_channels, kernel, stride)


def bit_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(32, channels, eps=1e-5)


def plain_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)


class Projection(nn.Module):
    """BiT's shortcut where the shape changes: a strided 1x1 convolution and a norm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = bit_conv(in_channels, out_channels, 1, stride)
        self.norm = bit_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class AveragedProjection(nn.Module):
    """ResNet-D's shortcut: average 2 x 2 neighbours first (a strided 1x1 convolution would read
    one pixel in four and drop the rest), then a 1x1 convolution and BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        self.conv = plain_conv(in_channels, out_channels, 1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.pool(x)))


class Bottleneck(nn.Module):
    """ResNet's bottleneck block (not pre-activation): a 1x1 convolution narrows to a quarter of
    the channels, a 3x3 (strided in a stage's first block) mixes neighbours, a 1x1 widens back:

        y   = relu(norm1(conv1(x)))           (B, C/4, H, W)
        y   = relu(norm2(conv2(y)))           (B, C/4, H/s, W/s)
        out = relu(norm3(conv3(y)) + shortcut(x))     (B, C, H/s, W/s)"""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv, norm, shortcut: nn.Module):
        super().__init__()
        mid = out_channels // 4
        self.conv1, self.norm1 = conv(in_channels, mid, 1), norm(mid)
        self.conv2, self.norm2 = conv(mid, mid, 3, stride), norm(mid)
        self.conv3, self.norm3 = conv(mid, out_channels, 1), norm(out_channels)
        self.downsample = shortcut  # the identity, but in a stage's first block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(self.norm3(self.conv3(y)) + self.downsample(x))


def stages(depths: tuple[int, ...], conv, norm, shortcut) -> nn.ModuleList:
    """The stages, each a list of `depth` Bottlenecks: (B, 64, H, W) -> (B, 256 * 2^(n-1), H / 2^(n-1), ...)."""
    result, channels = nn.ModuleList(), 64
    for index, (depth, out_channels) in enumerate(zip(depths, STAGE_CHANNELS)):
        stride = 1 if index == 0 else 2
        blocks = [Bottleneck(channels, out_channels, stride, conv, norm, shortcut(channels, out_channels, stride))]
        blocks += [Bottleneck(out_channels, out_channels, 1, conv, norm, nn.Identity()) for _ in range(depth - 1)]
        result.append(nn.ModuleList(blocks))
        channels = out_channels
    return result


def run_stages(stage_list: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for stage in stage_list:
        for block in stage:
            x = block(x)
    return x


class BitStem(nn.Module):
    """The paper's hybrid stem: BiT's ResNet without its head. A 7x7 stride-2 convolution to 64
    channels, GroupNorm, ReLU, a 3x3 stride-2 max pool (SAME padding), then the stages:

        (B, 3, H, W) -> (B, 64, H/4, W/4) -> stages -> (B, 1024, H/16, W/16) for (3, 4, 9)"""

    def __init__(self, depths: tuple[int, ...]):
        super().__init__()
        self.conv, self.norm = bit_conv(3, 64, 7, 2), bit_norm(64)
        self.stages = stages(depths, bit_conv, bit_norm, Projection)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(images)))
        x = F.max_pool2d(same_padding(x, 3, 2, value=float("-inf")), 3, 2)  # (B, 64, H/4, W/4)
        return run_stages(self.stages, x)


class ResNetDStem(nn.Module):
    """ResNet-D without its head: three 3x3 convolutions (32, 32, 64 channels, the first strided)
    in place of one 7x7, BatchNorm and ReLU after each, a 3x3 stride-2 max pool, then the stages.
    BatchNorm at evaluation uses its running statistics: y = (x - mean) / sqrt(var + eps) * w + b."""

    def __init__(self, depths: tuple[int, ...]):
        super().__init__()
        self.conv1, self.norm1 = plain_conv(3, 32, 3, 2), nn.BatchNorm2d(32)
        self.conv2, self.norm2 = plain_conv(32, 32, 3), nn.BatchNorm2d(32)
        self.conv3, self.norm3 = plain_conv(32, 64, 3), nn.BatchNorm2d(64)
        self.stages = stages(depths, plain_conv, nn.BatchNorm2d, AveragedProjection)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(images)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = F.relu(self.norm3(self.conv3(x)))
        x = F.max_pool2d(x, 3, 2, padding=1)  # (B, 64, H/4, W/4)
        return run_stages(self.stages, x)


class ConvStem(nn.Module):
    """MobileCLIP's stem (vit_base_mci_224): three non-overlapping strided convolutions, 4 x 4 then
    2 x 2 twice, BatchNorm and (exact) GELU after the first two; its output is already D wide:

        (B, 3, H, W) -> (B, D/4, H/4, W/4) -> (B, D/4, H/8, W/8) -> (B, D, H/16, W/16)"""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, dim // 4, 4, stride=4, bias=False), nn.BatchNorm2d(dim // 4)
        self.conv2, self.norm2 = nn.Conv2d(dim // 4, dim // 4, 2, stride=2, bias=False), nn.BatchNorm2d(dim // 4)
        self.conv3 = nn.Conv2d(dim // 4, dim, 2, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.conv1(images)))
        return self.conv3(F.gelu(self.norm2(self.conv2(x))))


def stem_channels(kind: str, depths: tuple[int, ...], dim: int) -> int:
    """Channels of the stem's map: 64 after a ResNet's stem alone, else its last stage's; D for MobileCLIP's."""
    if kind == "mobileclip":
        return dim
    return STAGE_CHANNELS[len(depths) - 1] if depths else 64


def make_stem(kind: str, depths: tuple[int, ...], dim: int) -> nn.Module:
    if kind == "bit":
        return BitStem(depths)
    if kind == "resnet_d":
        return ResNetDStem(depths)
    return ConvStem(dim)
