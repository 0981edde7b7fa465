"""The model's building blocks do what their docstrings say."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import vit
from tests.conftest import PLAIN_VITS
from vit.config import ViTConfig
from vit.layers.attention import MultiHeadSelfAttention
from vit.layers.embeddings import PatchEmbedding


def test_patch_conv_equals_linear_on_flattened_patches():
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=24, num_heads=2, depth=1)
    embed = PatchEmbedding(cfg)
    images = torch.randn(2, 3, 32, 32)
    patches = rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=8, p2=8)
    weight = embed.projection.weight.reshape(24, 3 * 8 * 8)
    expected = F.linear(patches, weight, embed.projection.bias)
    torch.testing.assert_close(embed(images), expected, atol=1e-5, rtol=1e-5)


def test_attention_is_softmax_qk_v_per_head():
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=24, num_heads=3, depth=1)
    attention = MultiHeadSelfAttention(cfg)
    x = torch.randn(2, 5, 24)
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 3, 8).permute(2, 0, 3, 1, 4)  # (B, H, T, hd) each
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attention.out_proj((weights @ v).transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-5)


def test_shapes_at_any_size_divisible_by_the_patch():
    model = vit.create_model("vit_tiny_patch16_224", num_classes=7, img_size=48)
    images = torch.randn(3, 3, 48, 48)
    assert model.forward_features(images).shape == (3, 1 + 9, 192)
    assert model(images).shape == (3, 7)


@torch.no_grad()
def test_pixels_past_the_last_whole_patch_are_not_read():
    """As timm's strided convolution (SigLIP so400m/14 at 384 px: 27 patches + 6 px): at 40 px a
    /16 model sees a 2 x 2 grid, exactly what the same weights see of the image's top-left 32 px."""
    model = vit.create_model("vit_tiny_patch16_224", num_classes=7, img_size=40).eval()
    cropped = vit.create_model("vit_tiny_patch16_224", num_classes=7, img_size=32).eval()
    cropped.load_state_dict(model.state_dict())
    torch.nn.init.normal_(model.head.weight)
    cropped.head.weight.copy_(model.head.weight)
    images = torch.randn(2, 3, 40, 40)
    assert model.cfg.grid_size == 2 and model.forward_features(images).shape == (2, 1 + 4, 192)
    torch.testing.assert_close(model(images), cropped(images[:, :, :32, :32]), atol=1e-6, rtol=1e-6)


def test_configurations_have_timms_sizes():
    import timm

    for name in PLAIN_VITS:  # every family's name: tests/test_families.py
        with torch.device("meta"):  # counting needs no values
            ours = sum(p.numel() for p in vit.create_model(name).parameters())
            reference = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
        assert ours == reference, name


def test_bad_names_and_sizes_are_refused():
    with pytest.raises(ValueError, match="unknown model 'vit_huge'; similar: vit_huge_patch14_224, vit_huge_patch14_clip_224"):
        vit.create_model("vit_huge")
    with pytest.raises(ValueError, match="unknown model 'resnet50'; python -m vit lists them"):
        vit.create_model("resnet50.a1_in1k")
    with pytest.raises(ValueError, match="img_size 8 is smaller than one patch"):
        vit.create_model("vit_base_patch16_224", img_size=8)


def test_family_fields_are_checked():
    with pytest.raises(ValueError, match="class_token must be True"):
        vit.ViTConfig(class_token=False)  # the CLS pooling needs the CLS token
    with pytest.raises(ValueError, match="activation must be one of"):
        vit.ViTConfig(activation="relu")
    model = vit.VisionTransformer(vit.ViTConfig(class_token=False, pool="avg", num_classes=0, depth=1,
                                                embed_dim=64, num_heads=2, register_tokens=2))
    assert model(torch.randn(3, 3, 224, 224)).shape == (3, 64)  # no classifier: the pooled features
