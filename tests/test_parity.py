"""Our ViT against timm's, loading the same timm-format safetensors file.

Outputs must agree to 1e-5 (fp32): the whole model, at other image sizes (resampled position
embeddings), with a new head, and stage by stage so that a mismatch shows where it starts.
"""

import pytest
import torch

import vit
from tests.conftest import make_timm_file, real_images

TOLERANCE = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def base_pair(tmp_path_factory, cifar_dir):
    """timm's vit_base_patch16_224 and ours loaded from its saved file, plus 4 real images."""
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    timm_model = make_timm_file("vit_base_patch16_224", path)
    ours = vit.create_model("vit_base_patch16_224", pretrained=path).eval()
    return timm_model, ours, real_images(cifar_dir, 4, 224), path


@torch.no_grad()
def test_vit_base_patch16_224_logits_match_timm(base_pair):
    timm_model, ours, images, _ = base_pair
    reference = timm_model(images)
    assert reference.abs().max() > 0.1  # a real, non-degenerate output to compare
    assert max_diff(ours(images), reference) <= TOLERANCE
    assert torch.equal(ours(images).argmax(1), reference.argmax(1))


@torch.no_grad()
def test_forward_features_match_timm(base_pair):
    timm_model, ours, images, _ = base_pair
    assert max_diff(ours.forward_features(images), timm_model.forward_features(images)) <= TOLERANCE


def timm_embedding(timm_model, images):
    """timm's tokens after CLS/registers and positions, and its RoPE embedding (None without):
    VisionTransformer's and Eva's `_pos_embed` (Eva's returns both), Beit's lines written out."""
    if type(timm_model).__name__ == "NaFlexVit":  # its table belongs to the patch embedding (`embeds`)
        return timm_model.embeds(images)[0], None
    patches = timm_model.patch_embed(images).flatten(1, -2)  # Eva's dynamic size gives (B, H, W, D)
    if type(timm_model).__name__ == "Beit":
        return torch.cat([timm_model.cls_token.expand(len(images), -1, -1), patches], dim=1), None
    if type(timm_model).__name__ == "Eva":
        return timm_model._pos_embed(timm_model.patch_embed(images))
    if type(timm_model).__name__ == "VisionTransformerSAM":  # the table as a map, resized to the grid at hand
        if timm_model.pos_embed is None:
            return patches, None
        from timm.layers import resample_abs_pos_embed_nhwc
        grid = timm_model.patch_embed(images)
        return (grid + resample_abs_pos_embed_nhwc(timm_model.pos_embed, grid.shape[1:3])).flatten(1, 2), None
    if type(timm_model).__name__ == "Cait":  # the table on the patches; the CLS token joins after the blocks
        return patches + timm_model.pos_embed, None
    if type(timm_model).__name__ == "VisionTransformerRelPos":  # no table: the CLS token, if any, in front
        prefix = [] if timm_model.cls_token is None else [timm_model.cls_token.expand(len(images), -1, -1)]
        return torch.cat([*prefix, patches], dim=1), None
    return timm_model._pos_embed(patches), None


def stages(timm_model, ours, images):
    """(name, timm stage, our stage) pairs, in the order the data flows. Each block is given its
    model's rotary embedding for `images` (timm's, ours), where the model has one."""
    _, timm_rope = timm_embedding(timm_model, images)
    grid = (images.shape[-2] // ours.cfg.patch_size, images.shape[-1] // ours.cfg.patch_size)
    rotations = ours.rope.rotations(grid)  # one per block (the identity without RoPE)
    mixed = ours.cfg.rope == "mixed"

    shared = getattr(timm_model, "shared_rel_pos", None)  # srelpos: one bias, handed to every block

    sam = type(timm_model).__name__ == "VisionTransformerSAM"  # its blocks and neck take maps (B, R, C, D)

    def timm_block(i, block):
        if sam:
            return lambda x: block(x.unflatten(1, grid)).flatten(1, 2)
        if shared is not None:
            return lambda x: block(x, shared_rel_pos=shared.get_bias())
        if timm_rope is None:
            return block
        return lambda x: block(x, rope=timm_rope[i] if mixed else timm_rope)

    def our_block(i, block):
        return lambda x: block(x, rotations[i])

    if type(timm_model).__name__ == "NaFlexVit":  # patches and their positions: NaFlex's embedding holds both
        timm_patches = lambda x: timm_model.embeds(x)[0][:, timm_model.num_prefix_tokens:]  # noqa: E731
    else:
        timm_patches = lambda x: timm_model.patch_embed(x).flatten(1, -2)  # noqa: E731
    pairs = [
        ("patch_embedding", timm_patches,
         lambda x: ours.norm_after_patches(ours.patch_embedding(x))),  # AIMv2's norm is timm's patch_embed.norm
        ("cls_and_position", lambda x: timm_embedding(timm_model, x)[0], ours.embed),
        ("norm_before_blocks", getattr(timm_model, "norm_pre", torch.nn.Identity()), ours.norm_before_blocks),
    ]
    pairs += [(f"block_{i}", timm_block(i, t), our_block(i, o)) for i, (t, o) in enumerate(zip(timm_model.blocks, ours.blocks))]
    if ours.cfg.class_attention_blocks:  # CaiT: the CLS token's class-attention blocks, after the patch blocks
        pairs.append(("class_attention", timm_model.forward_cls, lambda x: ours.class_attention(x, ours.cls_token)))
    if sam:  # the neck in place of the final norm, and a head that pools the map
        return pairs + [("final_norm", lambda x: timm_model.neck(x.unflatten(1, grid).permute(0, 3, 1, 2)).flatten(2)
                         .transpose(1, 2), ours.final_norm),
                        ("head", lambda x: timm_model.forward_head(x.transpose(1, 2).unflatten(2, grid)), ours.forward_head)]
    # With norm_after_pool the final norm belongs to the head (timm: fc_norm; its `norm` is Identity).
    pairs += [("final_norm", timm_model.norm, (lambda x: x) if ours.cfg.norm_after_pool else ours.final_norm),
              ("head", timm_model.forward_head, ours.forward_head)]
    return pairs


@torch.no_grad()
def stage_diffs(timm_model, ours, images: torch.Tensor) -> dict[str, float]:
    """Every stage's max |diff|, in order, each stage pair fed the same (timm's) input, so a
    failure names the first stage that differs instead of a diff that has grown through the rest
    of the network. The embedding stages take the images."""
    x, diffs = images, {}
    for name, timm_stage, our_stage in stages(timm_model, ours, images):
        if name in ("patch_embedding", "cls_and_position"):
            reference, mine = timm_stage(images), our_stage(images)
        else:
            reference, mine = timm_stage(x), our_stage(x)
        diffs[name] = max_diff(mine, reference)
        x = reference
    return diffs


def test_every_stage_matches_timm(base_pair):
    timm_model, ours, images, _ = base_pair
    diffs = stage_diffs(timm_model, ours, images)
    assert len(diffs) == 3 + 12 + 2
    mismatches = {name: diff for name, diff in diffs.items() if diff > TOLERANCE}
    assert not mismatches, f"stages that differ from timm: {mismatches}"


@torch.no_grad()
def test_stage_check_localises_a_broken_stage(base_pair):
    """The per-stage check is only useful if it points at the culprit: break block 5 of a copy
    and the first stage that differs must be block_5."""
    timm_model, ours, images, path = base_pair
    broken = vit.create_model("vit_base_patch16_224", pretrained=path).eval()
    broken.blocks[5].mlp_norm.eps = 1e-1
    first_bad = next(name for name, diff in stage_diffs(timm_model, broken, images).items() if diff > TOLERANCE)
    assert first_bad == "block_5"


@pytest.mark.parametrize("name,smaller", [
    ("vit_tiny_patch16_224", {}), ("vit_small_patch16_224", {}), ("vit_base_patch32_224", {}),
    ("vit_large_patch16_224", {"depth": 4}),  # its width and heads; 4 of its 24 identical blocks
])
@torch.no_grad()
def test_other_configurations_match_timm(name, smaller, tmp_path, cifar_dir):
    timm_model = make_timm_file(name, tmp_path / "model.safetensors", **smaller)
    ours = vit.create_model(name, pretrained=tmp_path / "model.safetensors", **smaller).eval()
    images = real_images(cifar_dir, 2, 224)
    assert max_diff(ours(images), timm_model(images)) <= TOLERANCE


@pytest.mark.parametrize("name,img_size", [
    ("vit_base_patch16_224", 384),  # upsampled position grid, 14 -> 24
    ("vit_tiny_patch16_224", 160),  # downsampled, 14 -> 10 (the antialiased path)
    ("vit_base_patch32_224", 256),  # 7 -> 8
])
@torch.no_grad()
def test_other_image_size_matches_timm_loading_the_same_file(name, img_size, tmp_path, cifar_dir):
    import timm

    smaller = {"depth": 2}  # the positions are resampled once, before the blocks: 2 blocks check it
    make_timm_file(name, tmp_path / "model.safetensors", **smaller)  # saved at 224
    reference = timm.create_model(
        name, img_size=img_size, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors")), **smaller,
    ).eval()
    ours = vit.create_model(name, img_size=img_size, pretrained=tmp_path / "model.safetensors", **smaller).eval()
    assert ours.position_embedding.shape == reference.pos_embed.shape
    images = real_images(cifar_dir, 2, img_size)
    assert max_diff(ours(images), reference(images)) <= TOLERANCE


@torch.no_grad()
def test_new_head_keeps_features_and_starts_at_zero(base_pair, cifar_dir):
    import timm

    timm_model, _, images, path = base_pair
    reference = timm.create_model(
        "vit_base_patch16_224", num_classes=10, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    ours = vit.create_model("vit_base_patch16_224", num_classes=10, pretrained=path).eval()
    assert max_diff(ours.forward_features(images), reference.forward_features(images)) <= TOLERANCE
    logits = ours(images)
    assert logits.shape == (4, 10)
    assert torch.count_nonzero(ours.head.weight) == 0  # fresh zeroed head: uniform predictions
