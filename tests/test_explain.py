"""Attention maps, rollout and `infer --explain`: exact against timm, and right on a model whose
answer is known by construction."""

import pytest
import torch
from PIL import Image

import vit
from tests.conftest import make_timm_file, real_images, run_cli
from vit.explain import attention_maps, attention_rollout, cls_attention


@pytest.mark.parametrize("name,size,smaller", [
    ("vit_tiny_patch16_224", 224, {}),  # learned absolute positions
    ("vit_small_patch16_rope_mixed_224", 160, {"depth": 3}),  # rotary: q and k rotated (learned frequencies)
    ("vit_small_patch16_dinov3", 128, {"depth": 3}),  # rotary with DINOv3's periods, 4 registers
    ("beit_base_patch16_224", 128, {"depth": 2}),  # relative position bias added to the logits
    ("vit_dwee_patch16_reg1_gap_256", 128, {"depth": 2}),  # differential: two maps, one subtracted
    ("vit_small_patch16_18x2_224", 128, {"depth": 2}),  # two attentions side by side: both sets of heads
    ("vit_large_patch16_sapiens2", (128, 96), {"depth": 3, "embed_dim": 128, "num_heads": 4, "kv_heads": 2,
                                               "full_attention_ends": 1}),  # grouped-query, q/k norms, 64 x 48 px
])
@torch.no_grad()
def test_attention_maps_equal_timms_attention_weights(name, size, smaller, tmp_path, cifar_dir):
    """timm's non-fused attention path materialises softmax(q k^T * scale [+ bias]) (q and k
    rotated first where there is RoPE) before attn_drop: catch it there and compare, block by
    block, on the same converted weights. Ours comes from the model's one attention path.
    Differential attention's two maps are combined as its paper does (first - lambda * second)."""
    timm_model = make_timm_file(name, tmp_path / "model.safetensors", img_size=size, **smaller)
    ours = vit.create_model(name, img_size=size, pretrained=tmp_path / "model.safetensors", **smaller).eval()
    images = real_images(cifar_dir, 2, size)

    def combined(attn, weights):  # (B, heads [x 2 for differential], T, T) -> the attention applied
        if not hasattr(attn, "_compute_lambda"):
            return weights
        b, two_heads, t, _ = weights.shape
        pairs = weights.view(b, two_heads // 2, 2, t, t)
        return pairs[:, :, 0] - attn._compute_lambda() * pairs[:, :, 1]

    expected = [[] for _ in timm_model.blocks]
    for caught, block in zip(expected, timm_model.blocks):
        for attn in [branch.attn for branch in block.attns] if hasattr(block, "attns") else [block.attn]:
            attn.fused_attn = False
            attn.attn_drop.register_forward_hook(
                lambda module, args, out, attn=attn, caught=caught: caught.append(combined(attn, out)))
    reference_logits = timm_model(images)
    maps = attention_maps(ours, images)
    tokens, heads = ours.cfg.num_tokens, ours.cfg.num_heads * ours.cfg.branches
    assert len(maps) == len(expected) == ours.cfg.depth
    for got, want in zip(maps, expected):
        want = torch.cat(want, dim=1)  # a block's branches' heads side by side
        assert got.shape == (2, heads, tokens, tokens) and got.dtype == torch.float32
        assert (got - want).abs().max() <= 1e-5
        if not ours.cfg.differential:  # (a differential map's rows sum to 1 - lambda)
            assert torch.allclose(got.sum(-1), torch.ones(2, heads, tokens))
    # Observing the attention leaves the model's own (fused) output as it was, and switches off again.
    assert (ours(images) - reference_logits).abs().max() <= 1e-5
    attentions = [attention for block in ours.blocks for attention in block.attentions]
    assert not any(attention.softmax_attention._forward_hooks for attention in attentions)  # the hooks are gone


def one_patch_model(target: int) -> vit.VisionTransformer:
    """A 1-block ViT whose CLS token provably attends to patch `target` alone (besides itself):
    the image contributes nothing (zero patch projection), only the CLS token and the target
    patch's position vector are non-zero and equal, and q = k = 8 * the normed token."""
    cfg = vit.ViTConfig(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    model = vit.VisionTransformer(cfg).eval()
    direction = torch.tensor([1.0, -1.0] * 16)  # zero mean: LayerNorm keeps its direction
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for norm in (model.blocks[0].attention_norm, model.blocks[0].mlp_norm, model.final_norm):
            norm.weight.fill_(1.0)
        model.cls_token[0, 0] = direction
        model.position_embedding[0, 1 + target] = direction
        d = cfg.embed_dim
        model.blocks[0].attention.qkv.weight[: 2 * d] = 8 * torch.eye(d).repeat(2, 1)  # q = k = 8 x
    return model


@pytest.mark.parametrize("target", [0, 5, 15])
def test_rollout_peaks_where_the_cls_token_provably_looks(target):
    model = one_patch_model(target)
    images = torch.randn(2, 3, 64, 64)
    maps = attention_maps(model, images)
    cls_row = maps[0][:, :, 0]  # (B, H, T): the CLS token's attention
    assert torch.allclose(cls_row[:, :, 1 + target], torch.full((2, 2), 0.5), atol=1e-4)  # itself and the target
    rollout = attention_rollout(model, images)
    assert rollout.shape == (2, 4, 4)
    assert rollout.flatten(1).argmax(1).tolist() == [target, target] and rollout.amax() == 1
    # The formula by hand for one block: A_hat = 0.5 A + 0.5 I, rows renormalised, CLS row over patches.
    a_hat = 0.5 * maps[0].mean(1) + 0.5 * torch.eye(17)
    a_hat = a_hat / a_hat.sum(-1, keepdim=True)
    expected = a_hat[:, 0, 1:] / a_hat[:, 0, 1:].amax(-1, keepdim=True)
    assert torch.allclose(rollout.flatten(1), expected, atol=1e-6)
    per_head = cls_attention(model, images)
    assert per_head.shape == (2, 2, 4, 4) and per_head.flatten(2).argmax(-1).eq(target).all()


def test_infer_explain_writes_one_picture_per_image(tiny_run, tmp_path):
    """Real images through the CLI: one PNG each, two inputs of one name apart (cat.png, cat-2.png);
    the same command again overwrites them instead of adding copies."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = tiny_run["data"] / "test" / "cat" / "0000.jpg"
    Image.open(source).resize((96, 96)).save(tmp_path / "a" / "cat.png")
    Image.open(source).save(tmp_path / "b" / "cat.png")
    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    result = run_cli("infer", "--checkpoint", checkpoint, "--image", str(tmp_path / "a"), str(tmp_path / "b"),
                        "--explain", str(tmp_path / "explained"))
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "explained").iterdir())
    assert written == ["cat-2.png", "cat.png"]
    again = run_cli("infer", "--checkpoint", checkpoint, "--image", str(tmp_path / "a"), str(tmp_path / "b"),
                       "--explain", str(tmp_path / "explained"))
    assert again.returncode == 0 and sorted(p.name for p in (tmp_path / "explained").iterdir()) == written
    for name in written:
        with Image.open(tmp_path / "explained" / name) as picture:
            assert picture.format == "PNG" and picture.size[0] >= 600 and picture.size[1] >= 200
    assert result.stdout.count("cat.png: ") == 2 and "explained" in result.stdout
    (tmp_path / "a-file").write_text("not a folder")
    blocked = run_cli("infer", "--checkpoint", checkpoint, "--image", str(tmp_path / "a"),
                         "--explain", str(tmp_path / "a-file" / "out"))
    assert blocked.returncode == 1 and "Traceback" not in blocked.stderr
    assert blocked.stderr.strip().splitlines() == [f"error: cannot write {tmp_path / 'a-file' / 'out'} (Not a directory)"]


def test_paper_figures_follow_their_formulas():
    from infer.figures import filter_components, mean_attention_distance, position_similarity

    model = one_patch_model(target=5)
    with torch.no_grad():
        model.position_embedding.normal_()
        model.position_embedding[0, 0] = 0
        model.position_embedding[0, 1 + 5] = model.cls_token[0, 0]  # keep the construction above
        model.patch_embedding.projection.weight.normal_()
    similarity = position_similarity(model)
    assert similarity.shape == (4, 4, 4, 4)
    assert torch.allclose(similarity[2, 3, 2, 3], torch.tensor(1.0)) and similarity.abs().max() <= 1 + 1e-6
    components = filter_components(model)
    assert components.shape == (28, 3, 16, 16) and components.min() == 0 and components.max() == 1
    # Queries other than the target patch have q = 0 -> uniform attention -> their mean distance
    # is the mean distance to every patch; the target patch attends to itself alone -> 0.
    with torch.no_grad():
        model.position_embedding.zero_()
        model.position_embedding[0, 1 + 5] = model.cls_token[0, 0]
        model.patch_embedding.projection.weight.zero_()  # the image plays no part again
    centres = torch.tensor([[r * 16.0, c * 16.0] for r in range(4) for c in range(4)])
    distance = torch.cdist(centres, centres)
    expected = (distance.mean(1).sum() - distance[5].mean()) / 16
    got = mean_attention_distance(model, torch.randn(2, 3, 64, 64))
    assert got.shape == (1, 2) and torch.allclose(got, expected.expand(1, 2), atol=1e-4)


def test_figures_command_writes_the_three_pngs(tmp_path, cifar_dir):
    make_timm_file("vit_tiny_patch16_224", tmp_path / "model.safetensors")
    result = run_cli("infer.figures", str(tmp_path / "figures"), "--model", "vit_tiny_patch16_224",
                        "--pretrained", str(tmp_path / "model.safetensors"), "--images", str(cifar_dir / "test"),
                        "--num-images", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    expected = {"patch_embedding_filters.png": (700, 440), "position_similarity.png": (600, 600),
                "attention_distance.png": (600, 440)}
    for name, size in expected.items():
        with Image.open(tmp_path / "figures" / name) as picture:
            assert picture.format == "PNG" and picture.size == size, (name, picture.size)
    missing = run_cli("infer.figures", str(tmp_path / "f2"), "--model", "vit_tiny_patch16_224",
                         "--pretrained", "none", "--images", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no folder of images" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "a-file").write_text("not a folder")
    blocked = run_cli("infer.figures", str(tmp_path / "a-file" / "out"), "--model", "vit_tiny_patch16_224",
                         "--pretrained", "none", "--images", str(cifar_dir / "test"), "--num-images", "2")
    assert blocked.returncode == 1 and blocked.stderr.strip().splitlines() == [
        f"error: cannot write {tmp_path / 'a-file' / 'out'} (Not a directory)"]


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2", "vit_base_patch16_siglip_224"])
def test_rollout_reads_the_right_row_and_columns_with_prefix_tokens(name):
    """With registers the patch columns start after 5 prefix tokens; without a CLS token the row
    read is the mean of the patch rows. Checked against the formula written out by hand."""
    from vit.explain import last_cls_attention, rollout
    from vit.families import model_config

    cfg = model_config(name, img_size=4 * model_config(name).patch_size)  # a 4 x 4 grid
    prefix, tokens = cfg.num_prefix_tokens, cfg.num_prefix_tokens + 16
    generator = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 3, tokens, tokens, generator=generator).softmax(-1) for _ in range(3)]
    flow = torch.eye(tokens).expand(2, tokens, tokens)
    for attention in maps:
        a_hat = 0.5 * attention.mean(1) + 0.5 * torch.eye(tokens)
        flow = (a_hat / a_hat.sum(-1, keepdim=True)) @ flow
    row = flow[:, 0] if cfg.class_token else flow[:, prefix:].mean(1)  # (2, T)
    expected = row[:, prefix:].reshape(2, 4, 4)
    assert torch.allclose(rollout(maps, cfg), expected / expected.amax(dim=(1, 2), keepdim=True), atol=1e-6)
    last = maps[-1][:, :, 0] if cfg.class_token else maps[-1][:, :, prefix:].mean(2)
    assert torch.equal(last_cls_attention(maps, cfg), last[:, :, prefix:].reshape(2, 3, 4, 4))


def test_heat_map_covers_the_patches_and_leaves_unread_pixels_cold():
    from infer.pictures import heat_map

    heat = heat_map(torch.ones(2, 2), size=40, patch_size=16)  # 2 patches of 16 px + 8 px never read
    assert heat.shape == (40, 40) and (heat[:32, :32] == 1).all()
    assert (heat[32:] == 0).all() and (heat[:, 32:] == 0).all()
    whole = heat_map(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), size=32, patch_size=16)
    assert whole[:, 0].max() < 0.5 < whole[:, -1].min()  # left patch column cold, right one hot


@torch.no_grad()
def test_talking_heads_weights_are_timms_and_cait_pictures_are_refused_in_one_line(tmp_path, cifar_dir):
    """CaiT's talking heads mix the heads' logits and weights (no fused kernel): what
    recording_attention writes out is timm's mixed map, caught where timm applies it to v. The
    pictures read the CLS token's row in every block, which CaiT's blocks do not hold: refused."""
    from vit.explain import recording_attention

    name, size = "cait_xxs24_224", 128
    timm_model = make_timm_file(name, tmp_path / "model.safetensors", img_size=size, depth=2)
    ours = vit.create_model(name, img_size=size, pretrained=tmp_path / "model.safetensors", depth=2).eval()
    images = real_images(cifar_dir, 2, size)
    expected = []
    for block in timm_model.blocks:
        block.attn.attn_drop.register_forward_hook(lambda module, args, out: expected.append(out))
    timm_model(images)
    with recording_attention(ours) as recorded:
        ours(images)
    got = [recorded[block.attention][0] for block in ours.blocks]
    assert len(got) == len(expected) == 2
    for mine, theirs in zip(got, expected):
        assert mine.shape == (2, 4, 64, 64) and (mine - theirs).abs().max() <= 1e-5  # patches only: no CLS
    with pytest.raises(ValueError, match="CaiT's CLS token joins only after them"):
        attention_maps(ours, images)
