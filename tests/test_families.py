"""The ViT family (vit/families.py) against timm: every name's table entry, and for each family
two names loaded from timm-format files with every parameter perturbed, compared to 1e-5."""

import pytest
import torch

import vit
from tests.conftest import make_timm_file, real_images, run_cli, timm_arguments
from tests.test_parity import TOLERANCE, max_diff, stage_diffs
from infer.export import timm_state_dict
from vit.families import LEFT_OUT, MODELS, model_config
from weights.layouts import LAYOUTS


ROPES = {"RotaryEmbeddingCat": "axial", "RotaryEmbeddingDinoV3": "dinov3", "RotaryEmbeddingMixed": "mixed"}


def attn_heads(block) -> int:
    return block.attn.num_heads


def what_shapes_cannot_tell(reference) -> dict:
    """Read off a timm model (on the meta device) what its tensors' shapes do not show, in our
    ViTConfig's terms: the MLP's activation and kind, the pooling, the norms, the position schemes."""
    block = reference.blocks[0]
    kind = type(block).__name__
    parallel = kind in ("ParallelScalingBlock", "DiffParallelScalingBlock")  # one block holds attention and MLP
    if kind == "ParallelThingsBlock":  # branches: read the first
        attn, mlp, norm = block.attns[0].attn, block.ffns[0].mlp, block.attns[0].norm
    else:
        attn, mlp, norm = (block, block, block.in_norm) if parallel else (block.attn, block.mlp, block.norm1)
    gated = hasattr(mlp, "fc1_g") or type(mlp).__name__ == "GluMlp"
    activations = {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}
    seen = dict(
        gated_mlp=gated, pool=reference.global_pool, layer_norm_eps=norm.eps,
        norm="rmsnorm" if "Rms" in type(norm).__name__ else "layernorm",
        norm_after_pool=not isinstance(getattr(reference, "fc_norm", None), (type(None), torch.nn.Identity)),
        final_norm=not (isinstance(getattr(reference, "norm", None), torch.nn.Identity)  # (SAM: its neck)
                        and isinstance(getattr(reference, "fc_norm", torch.nn.Identity()), torch.nn.Identity)),
        post_norm=kind in ("ResPostBlock", "EvaBlockPostNorm", "ResPostRelPosBlock"),
        parallel=parallel, branches=len(block.attns) if kind == "ParallelThingsBlock" else 1,
        differential="Diff" in type(attn).__name__,
        qk_norm=not isinstance(getattr(attn, "q_norm", torch.nn.Identity()), torch.nn.Identity),
        # Sapiens2: fewer key/value heads in the middle blocks; layer scale on the attention branch alone
        kv_heads=min((b.attn.num_kv_heads for b in reference.blocks if getattr(b, "attn", None) is not None
                      and getattr(b.attn, "num_kv_heads", attn_heads(b)) < attn_heads(b)), default=None),
        layer_scale_mlp=not (getattr(block, "gamma_1", None) is not None and getattr(block, "gamma_2", 0) is None),
        talking_heads=type(attn).__name__ == "TalkingHeadAttn",
        class_attention_blocks=len(getattr(reference, "blocks_token_only", ())),  # CaiT
        decomposed_relative_positions=getattr(attn, "use_rel_pos", False),  # SAM
        window_size=max((getattr(b, "window_size", 0) for b in reference.blocks), default=0),
    )
    embeds = getattr(reference, "embeds", None)  # NaFlexVit: its table and how it is resized at every forward
    seen["naflex"] = embeds is not None
    if embeds is not None:
        factorized = embeds.pos_embed_type == "factorized"
        seen.update(factorized_positions=factorized, position_keeps_aspect=embeds.pos_embed_ar_preserving,
                    position_grid=(embeds.pos_embed_y if factorized else embeds.pos_embed).shape[1])
        if not factorized:  # (a factorized table is stretched linearly, whatever the mode)
            mode, antialias, corners = embeds.pos_embed_interp_mode, embeds.pos_embed_antialias, embeds.pos_embed_align_corners
            seen["position_resize"] = {("bicubic", True, False): "bicubic", ("bilinear", True, False): "bilinear_antialiased",
                                       ("bilinear", False, False): "bilinear",
                                       ("bilinear", False, True): "bilinear_corners"}[mode, antialias, corners]
    if seen["window_size"]:  # SAM: which blocks attend globally, and its neck
        seen["global_blocks"] = tuple(i for i, b in enumerate(reference.blocks) if b.window_size == 0)
        seen["neck_channels"] = reference.neck[0].out_channels if isinstance(reference.neck, torch.nn.Sequential) else 0
    fused = getattr(attn, "in_proj" if parallel else "qkv", None)
    q_proj = getattr(attn, "q_proj", None)
    seen["qkv_bias"] = getattr(attn, "q_bias", None) is not None or (fused or q_proj).bias is not None
    if seen["qkv_bias"]:  # k's bias: fused in qkv, or a k_proj bias (EVA-02 has none, nor has q_bias + v_bias)
        seen["key_bias"] = getattr(attn, "q_bias", None) is None and (fused is not None or attn.k_proj.bias is not None)
    if not gated:
        seen["activation"] = activations[type(mlp.mlp_act if parallel else mlp.act).__name__]
    rope = getattr(reference, "rope", None)
    seen["rope"] = ROPES[type(rope).__name__] if rope is not None else None
    if rope is not None:
        seen["rope_temperature"] = float(rope.temperature)
        seen["rope_xy"] = rope.grid_indexing == "xy"
        if seen["rope"] != "mixed":
            seen["rope_offset"] = float(rope.grid_offset)
        if seen["rope"] == "axial":
            ref = rope.ref_feat_shape
            seen["rope_reference_grid"] = None if ref is None else ref[0]
    if reference.global_pool == "map":  # timm's Eva lets its attention pool read the CLS token too
        seen["pool_reads_prefix"] = getattr(reference, "pool_include_prefix", type(reference).__name__ == "Eva")
    return seen


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_name_has_timms_architecture_weights_and_normalisation(name):
    """Shapes of every tensor (timm's model built on the meta device, keys converted to ours),
    what shapes cannot tell (activation, pooling, norms, RoPE's kind and constants, ...), and the
    default weights, native size, class count and mean/std of timm's pretrained_cfg."""
    import timm

    # timm's VisionTransformer (and DeiT's) can skip drawing initial values (weight_init="skip"),
    # which on the meta device only cost time; the architecture is the same. Eva and BEiT cannot.
    skip = {"weight_init": "skip"} if name in timm.list_models(module=["vision_transformer", "deit"]) else {}
    with torch.device("meta"):
        reference = timm.create_model(name, **skip)
        ours = vit.VisionTransformer(model_config(name))
    theirs = {k: tuple(v.shape) for k, v in LAYOUTS["timm"].to_ours(reference.state_dict()).items()}
    assert theirs == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    # ... and back: an export writes exactly timm's keys for the name
    assert {k: tuple(v.shape) for k, v in timm_state_dict(ours.state_dict(), name).items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()}
    seen = what_shapes_cannot_tell(reference)
    assert seen == {field: getattr(ours.cfg, field) for field in seen}
    cfg, spec = timm.models.get_pretrained_cfg(name), MODELS[name]
    assert spec.weights == cfg.hf_hub_id
    assert (spec.mean, spec.std) == (tuple(cfg.mean), tuple(cfg.std))
    assert ours.cfg.image_shape == tuple(cfg.input_size[1:]) and ours.cfg.num_classes == cfg.num_classes


def test_every_timm_vit_name_is_in_the_table_or_said_to_be_left_out():
    """timm's ViT modules against our table: every name (timm's test_vit* and the multiway BEiT-3
    aside) is in it; the ones left out are exactly those vit/families.py's docstring names."""
    import timm

    names = {name for module in ("vision_transformer", "eva", "beit", "deit", "vision_transformer_relpos", "cait",
                                 "vision_transformer_sam", "vision_transformer_hybrid", "naflexvit")
             for name in timm.list_models(module=module) if not name.startswith(("test_vit", "beit3"))}
    left_out = names - set(MODELS)
    assert set(MODELS) <= names
    assert left_out == set(LEFT_OUT), sorted(left_out ^ set(LEFT_OUT))


# (name, what both sides shrink to keep CI quick, another image size): two names per family
CASES = [
    ("deit_tiny_patch16_224", {}, 160),
    ("deit_small_patch16_224", {"depth": 4}, 256),
    ("deit_tiny_distilled_patch16_224", {}, 160),
    ("deit_small_distilled_patch16_224", {"depth": 4}, 256),
    ("deit3_small_patch16_224", {"depth": 6}, 160),
    ("deit3_medium_patch16_224", {"depth": 4}, 256),
    ("vit_small_patch14_dinov2", {"depth": 4}, 224),
    ("vit_base_patch14_dinov2", {"depth": 2}, 224),
    ("vit_small_patch14_reg4_dinov2", {"depth": 4}, 224),
    ("vit_base_patch14_reg4_dinov2", {"depth": 2}, 224),
    ("vit_xsmall_patch16_clip_224", {}, 160),
    ("vit_base_patch32_clip_224", {"depth": 3}, 256),
    ("vit_base_patch16_clip_quickgelu_224", {"depth": 2}, 160),
    ("vit_base_patch32_clip_quickgelu_224", {"depth": 3}, 256),
    ("vit_base_patch16_siglip_224", {"depth": 2}, 256),
    ("vit_base_patch32_siglip_256", {"depth": 3}, 224),
    ("vit_base_patch16_siglip_gap_224", {"depth": 2}, 160),
    ("vit_so400m_patch14_siglip_gap_224", {"depth": 1}, 168),
    ("vit_so400m_patch14_siglip_384", {"depth": 1}, 224),  # 384 px: 27 patches of 14, 6 px unread
    ("vit_medium_patch16_gap_256", {"depth": 4}, 224),
    ("vit_medium_patch16_gap_384", {"depth": 2}, 256),
    ("vit_wee_patch16_reg1_gap_256", {}, 224),
    ("vit_medium_patch16_reg4_gap_256", {"depth": 4}, 192),
    ("vit_so150m_patch16_reg4_gap_256", {"depth": 2}, 224),
    ("vit_so150m_patch16_reg4_map_256", {"depth": 1}, 224),  # the attention pool skips the registers
    ("flexivit_small", {"depth": 2}, 224),
    ("vit_base_patch16_rpn_224", {"depth": 2}, 160),  # res-post-norm
    ("vit_base_patch16_radio_v3", {"depth": 1}, 256),  # no final norm
    ("vit_base_patch14_reg1_tipsv2", {"depth": 1}, 224),
    ("vit_giant_patch14_dinov2", {"depth": 1, "embed_dim": 384, "num_heads": 6}, 224),  # packed SwiGLU (GluMlp)
    ("eva_large_patch14_196", {"depth": 1, "embed_dim": 256, "num_heads": 4}, 224),
    ("eva_giant_patch14_224", {"depth": 1, "embed_dim": 256, "num_heads": 4}, 168),  # q and v biases only
    # The modern family: RoPE, relative position bias, SwiGLU, RMSNorm
    ("beit_base_patch16_224", {"depth": 2}, 160),  # relative position tables resampled 14 -> 10
    ("beitv2_base_patch16_224", {"depth": 1}, 256),
    ("eva02_tiny_patch14_224", {"depth": 2}, 168),  # RoPE rescaled to the 16 x 16 reference grid
    ("eva02_base_patch14_224", {"depth": 1}, 196),  # separate q/k/v, SwiGLU with its inner norm
    ("eva02_base_patch16_clip_224", {"depth": 1}, 160),  # + attention's inner norm
    ("vit_small_patch16_dinov3", {"depth": 2}, 224),
    ("vit_small_plus_patch16_dinov3_qkvb", {"depth": 2}, 192),  # SwiGLU, q and v biases
    ("vit_small_patch16_lingbot", {"depth": 1}, 256),
    ("vit_small_patch16_rope_224", {"depth": 2}, 160),
    ("vit_small_patch16_rope_ape_224", {"depth": 2}, 256),  # RoPE beside the position table
    ("vit_small_patch16_rope_mixed_224", {"depth": 2}, 160),  # learned frequencies per block and head
    ("vit_small_patch16_rope_mixed_ape_224", {"depth": 2}, 256),
    ("vit_medium_patch16_rope_reg1_gap_256", {"depth": 2}, 224),
    ("vit_betwixt_patch16_rope_reg4_gap_256", {"depth": 1}, 192),
    ("vit_pe_core_tiny_patch16_384", {"depth": 2}, 224),  # RoPE from 1, x first; the pool reads the CLS token
    ("vit_pe_core_small_patch16_384", {"depth": 1}, 256),
    ("vit_pe_spatial_tiny_patch16_512", {"depth": 1}, 256),
    ("vit_pe_spatial_small_patch16_512", {"depth": 1}, 384),
    ("aimv2_large_patch14_224", {"depth": 2, "embed_dim": 256, "num_heads": 4}, 168),  # RMSNorm, SwiGLU, no biases
    ("aimv2_huge_patch14_224", {"depth": 1, "embed_dim": 192, "num_heads": 3}, 196),
    # timm's relpos ViTs: a relative position MLP per block (any size: no table to resample)
    ("vit_relpos_small_patch16_224", {"depth": 2}, 160),
    ("vit_relpos_medium_patch16_cls_224", {"depth": 2}, 256),  # a CLS token: no bias for it
    ("vit_relpos_base_patch16_clsgap_224", {"depth": 1}, 192),  # CLS token, mean of the patches
    ("vit_relpos_base_patch32_plus_rpn_256", {"depth": 2}, 224),  # res-post-norm blocks
    ("vit_srelpos_small_patch16_224", {"depth": 2}, 192),  # one MLP shared by the blocks
    # CaiT: talking heads, then the CLS token's class-attention blocks
    ("cait_xxs24_224", {"depth": 2}, 160),
    ("cait_xs24_384", {"depth": 1}, 224),
    # Other blocks: parallel, branched, differential, grouped-query
    ("vit_base_patch16_xp_224", {"depth": 2, "embed_dim": 192, "num_heads": 3}, 160),  # in_proj + mlp_bias, q/k norms
    ("vit_small_patch16_18x2_224", {"depth": 2}, 160),  # 2 attentions, then 2 MLPs, side by side
    ("vit_pwee_patch16_reg1_gap_256", {"depth": 2}, 224),  # in_proj with biases
    ("vit_dwee_patch16_reg1_gap_256", {"depth": 2}, 192),  # differential attention
    ("vit_dpwee_patch16_reg1_gap_256", {"depth": 3}, 224),  # both, one fused out_proj
    # NaFlex: the table resized to every input (here at the native 384 px and another size)
    ("naflexvit_base_patch16_gap", {"depth": 1}, 224),
    ("naflexvit_base_patch16_parfac_gap", {"depth": 1}, 256),  # a table per axis, the aspect kept
    ("naflexvit_base_patch16_siglip", {"depth": 1}, 192),  # bilinear with antialiasing, attention pool
    ("naflexvit_base_patch16_radio_v3", {"depth": 1}, 256),  # 128 x 128 table, CLS + 7 registers
    # The paper's hybrids: a CNN stem's map in place of the patches
    ("vit_base_r50_s16_224", {"depth": 1, "embed_dim": 192, "num_heads": 3}, 256),  # BiT R50, 3 stages: the paper's
    ("vit_small_r26_s32_224", {"depth": 1}, 256),  # 4 stages, stride 32
    ("vit_tiny_r_s16_p8_224", {"depth": 2}, 256),  # the stem alone, patch 8
    ("vit_small_resnet50d_s16_224", {"depth": 1, "embed_dim": 192, "num_heads": 3}, 160),  # ResNet-D, BatchNorm
    ("vit_base_mci_224", {"depth": 1}, 256),  # MobileCLIP's conv stem, no projection
    # SAM at 1024 px: windowed blocks and a global one (block 2), the neck; and without either's tables
    ("samvit_base_patch16", {"depth": 3, "embed_dim": 192, "num_heads": 3}, 448),  # 448: windows padded 28 -> 28
    ("samvit_base_patch16_224", {"depth": 3, "embed_dim": 192, "num_heads": 3}, 320),  # 20 patches: padded to 28
    # Sapiens2 at its native 1024 x 768, with a grouped-query middle block (2 kv heads for 4 query heads)
    ("vit_large_patch16_sapiens2", {"depth": 3, "embed_dim": 128, "num_heads": 4, "kv_heads": 2,
                                    "full_attention_ends": 1}, (256, 192)),
]


def shape_of(tensor):
    return None if tensor is None else tuple(tensor.shape)


def with_prefix(output) -> tuple:
    """A forward_intermediates output as (map, prefix tokens or None): a model without prefix
    tokens gives the map alone."""
    return (output, None) if isinstance(output, torch.Tensor) else output


def timm_at_size(name, size, path, reference, smaller):
    """timm's model at another image size, loading the file as timm does. CaiT's loader keeps the
    table as it is (its names have fixed sizes), so there the table goes through timm's own
    resample_abs_pos_embed first, as timm resizes every other ViT's; SAM's model resizes its
    tables at every forward pass (and NaFlex's its table), so there it is the model at its own size. timm's ResNet-D
    hybrids load their stem's own weights when asked for pretrained ones: their file goes through
    timm's filter (which resizes the table) and load_state_dict."""
    import timm
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    if MODELS[name].family in ("sam", "naflex", "naflex_radio"):  # these resize their tables at every forward:
        return reference  # timm's own model, as it is
    family = MODELS[name].family
    if family not in ("cait", "hybrid_d"):
        overlay = dict(file=str(path), num_classes=reference.num_classes)
        return timm.create_model(name, img_size=size, pretrained=True, pretrained_cfg_overlay=overlay,
                                 **timm_arguments(smaller)).eval()
    model = timm.create_model(name, img_size=size, **smaller).eval()
    state = load_file(str(path))
    if family == "cait":
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], model.patch_embed.grid_size, num_prefix_tokens=0)
    else:  # (pretrained=True would fetch the ResNet-D stem's own ImageNet weights first: timm's filter instead)
        state = timm.models.vision_transformer.checkpoint_filter_fn(state, model)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("name,smaller,other_size", CASES, ids=[case[0] for case in CASES])
@torch.no_grad()
def test_family_member_matches_timm_at_its_size_another_size_and_with_a_new_head(
        name, smaller, other_size, tmp_path, cifar_dir):
    import timm

    path = tmp_path / "model.safetensors"
    native = model_config(name).img_size  # a side, or (height, width): Sapiens2
    reference = make_timm_file(name, path, img_size=native, **smaller)
    ours = vit.create_model(name, pretrained=path, **smaller).eval()
    assert ours.cfg.img_size == native and ours.cfg.num_classes == reference.num_classes
    images = real_images(cifar_dir, 1, native)  # one image at up to 518 px (two at the other size, below)
    expected = reference(images)
    assert expected.abs().max() > 0.1  # a real output, not a degenerate one
    assert max_diff(ours(images), expected) <= TOLERANCE

    # Stage by stage, from timm's inputs: prefix tokens and positions, each block, the pooling head.
    mismatches = {stage: diff for stage, diff in stage_diffs(reference, ours, images).items() if diff > TOLERANCE}
    assert not mismatches, f"stages that differ from timm: {mismatches}"

    # timm's forward_intermediates: every block's patch tokens as maps on the patch grid, normed,
    # with the prefix tokens beside them, and the final tokens.
    # (asked only where the blocks have prefix tokens: timm's relpos model fails without, CaiT's has no argument)
    prefix = {"return_prefix_tokens": True} if ours.cfg.prefix_in_blocks else {}
    final, maps = ours.forward_intermediates(images, norm=True, **prefix)
    expected_final, expected_maps = reference.forward_intermediates(images, norm=True, **prefix)
    if expected_final.ndim == 4:  # SAM's: the neck's map (B, C, rows, columns); ours, tokens as always
        expected_final = expected_final.flatten(2).transpose(1, 2)
    assert max_diff(final, expected_final) <= TOLERANCE and len(maps) == len(expected_maps) == len(ours.blocks)
    for mine, theirs in zip(map(with_prefix, maps), map(with_prefix, expected_maps)):
        assert max_diff(mine[0], theirs[0]) <= TOLERANCE and shape_of(mine[1]) == shape_of(theirs[1])
        assert mine[1] is None or max_diff(mine[1], theirs[1]) <= TOLERANCE

    # Another size: timm resamples the positions as it loads the file; so must we.
    resized = timm_at_size(name, other_size, path, reference, smaller)
    ours = vit.create_model(name, img_size=other_size, pretrained=path, **smaller).eval()
    if ours.cfg.absolute_positions and not ours.cfg.window_size:  # (SAM's and NaFlex's keep theirs at the file's size)
        assert shape_of(ours.position_embedding) == shape_of(getattr(resized, "pos_embed", None))  # None: in attention
    if ours.cfg.relative_position_bias:  # BEiT: tables resampled for the new grid, as timm's
        assert ours.blocks[0].attention.relative_bias.table.shape == resized.blocks[0].attn.relative_position_bias_table.shape
    images = real_images(cifar_dir, 2, other_size)
    assert max_diff(ours(images), resized(images)) <= TOLERANCE

    # A new 10-class head: timm's starts random (reset_classifier, timm's way to a new head), ours
    # at zero; with timm's copied in, equal.
    fresh = resized
    fresh.reset_classifier(10)
    ours = vit.create_model(name, img_size=other_size, num_classes=10, pretrained=path, **smaller).eval()
    assert torch.count_nonzero(ours.head.weight) == 0
    ours.head.load_state_dict(getattr(fresh.head, "fc", fresh.head).state_dict())  # (SAM's head holds it as fc)
    if ours.head_distillation is not None:
        ours.head_distillation.load_state_dict(fresh.head_dist.state_dict())
    assert max_diff(ours(images), fresh(images)) <= TOLERANCE


# One name per family, fine-tuned from its timm-format file at a small image size (a multiple
# of its patch), then used by infer, explained and exported, as a user would.
RUNS = [  # (name, image size, also export to ONNX: a few seconds each, so for two of them)
    ("deit_tiny_distilled_patch16_224", 32, False),
    ("deit3_small_patch16_224", 32, False),
    ("vit_small_patch14_reg4_dinov2", 28, True),
    ("vit_xsmall_patch16_clip_224", 32, False),
    ("vit_base_patch16_siglip_224", 32, False),
    ("vit_wee_patch16_reg1_gap_256", 32, True),
    ("beit_base_patch16_224", 32, False),  # relative position bias (tables resampled 14 -> 2)
    ("eva02_tiny_patch14_224", 28, False),  # RoPE, SwiGLU (ONNX: tests/test_export.py, the modern family)
    ("vit_small_patch16_dinov3", 32, False),  # DINOv3's RoPE, registers
    ("vit_small_patch16_rope_mixed_224", 32, False),  # learned RoPE frequencies
    ("vit_pe_core_tiny_patch16_384", 32, False),  # RoPE beside the table, attention pool over CLS + patches
    ("vit_dpwee_patch16_reg1_gap_256", 32, False),  # parallel block with differential attention
]


@pytest.mark.parametrize("name,img_size,onnx", RUNS, ids=[run[0] for run in RUNS])
def test_family_member_fine_tunes_infers_explains_and_exports(name, img_size, onnx, tmp_path, cifar_dir, monkeypatch):
    """One block of the name's kind (the table's entry made 1 deep for this test, timm's model
    likewise): what is checked is the path through train, infer, explain and export, not depth."""
    import dataclasses

    import timm

    from infer.predict import Classifier
    from tests.conftest import make_subset
    from train import TrainConfig
    from train.loop import train
    from infer.export import ExportError, export

    monkeypatch.setitem(MODELS, name, dataclasses.replace(MODELS[name], config={**MODELS[name].config, "depth": 1}))
    make_timm_file(name, tmp_path / "model.safetensors", img_size=model_config(name).img_size, depth=1)
    data = make_subset(cifar_dir, tmp_path / "data", 3, 1)
    final = train(TrainConfig(data=str(data), model=name, pretrained=str(tmp_path / "model.safetensors"),
                              img_size=img_size, epochs=1, batch_size=8, lr=1e-4, device="cpu",
                              output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), num_workers=1))
    checkpoint = tmp_path / "out" / "vit_data_finetuned.pth"

    classifier = Classifier(checkpoint, device="cpu")
    assert (classifier.card.mean, classifier.card.std) == (MODELS[name].mean, MODELS[name].std)  # the family's
    assert classifier.evaluate_folder(data / "test")["top1"] == pytest.approx(final["test_acc"])
    (prediction, picture), = classifier.explain([data / "test" / "cat" / "0000.jpg"], tmp_path / "explained")
    assert prediction.top and picture.stat().st_size > 0

    said = export(checkpoint, "timm", tmp_path / "exported.safetensors")
    assert f"timm.create_model('{name}'" in said
    reference = timm.create_model(name, num_classes=10, img_size=img_size, pretrained=True, depth=1,
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "exported.safetensors"),
                                                              num_classes=10)).eval()
    images = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        assert max_diff(classifier.model(images), reference(images)) <= TOLERANCE
    if onnx:  # the exported graph gives the same predictions through infer's ONNX path
        export(checkpoint, "onnx", tmp_path / "model.onnx")
        on_onnx = Classifier(tmp_path / "model.onnx", device="cpu").evaluate_folder(data / "test")["top1"]
        assert on_onnx == pytest.approx(final["test_acc"])
    with pytest.raises(ExportError, match="export as timm or onnx"):
        export(checkpoint, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # refused before writing anything


def test_default_weights_follow_timms_names_and_tags():
    from vit.families import default_weights

    assert default_weights("vit_small_patch14_dinov2") == "timm/vit_small_patch14_dinov2.lvd142m"
    assert default_weights("vit_base_patch16_clip_224.openai") == "timm/vit_base_patch16_clip_224.openai"
    # QuickGELU names keep their weights under the plain CLIP name's repos, tags included
    assert default_weights("vit_base_patch16_clip_quickgelu_224.openai") == "timm/vit_base_patch16_clip_224.openai"


def test_a_tagged_name_downloads_that_tags_weights_and_normalisation(tmp_path):
    """`name.tag` with pretrained='default' fetches timm/<name>.<tag> through the real hub code
    (a local server plays the hub) and takes mean/std from that repo's config.json."""
    import json

    from tests.conftest import run_module
    from tests.fake_hub import FakeHub

    repo = "timm/vit_xsmall_patch16_clip_224.made_up_tag"
    make_timm_file("vit_xsmall_patch16_clip_224", tmp_path / "model.safetensors", depth=1)
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}))
    code = ("import vit; m = vit.create_model('vit_xsmall_patch16_clip_224.made_up_tag', pretrained='default', depth=1); "
            "print(m.pretrained_cfg['mean'], m.pretrained_cfg['std'], m.cfg.num_classes)")
    files = {f"{repo}/model.safetensors": tmp_path / "model.safetensors", f"{repo}/config.json": tmp_path / "config.json"}
    with FakeHub(files) as hub:
        result = run_module("-c", code, env={"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hub"),
                                             "HF_HUB_OFFLINE": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["(0.1,", "0.2,", "0.3)", "(0.4,", "0.5,", "0.6)", "512"]


def test_train_cli_checks_family_names_and_their_patch_sizes():
    result = run_cli("train", "--model", "vit_small_patch14_dinov2", "--img-size", "32", "--data", "/tmp")
    assert result.returncode == 2 and "not a multiple of vit_small_patch14_dinov2's patch size 14 (e.g. 28)" in result.stderr
    result = run_cli("train", "--model", "vit_small_patch14_dinov3", "--data", "/tmp")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "unknown model 'vit_small_patch14_dinov3'; similar: vit_small_patch16_dinov3, vit_small_patch14_dinov2" in result.stderr


@pytest.mark.parametrize("name,layout,size,smaller", [
    ("vit_small_patch14_dinov2", "hf_dinov2", 224, {}), ("vit_small_patch14_reg4_dinov2", "hf_dinov2", 224, {}),
    ("vit_base_patch16_siglip_224", "hf_siglip", 224, {}),
    # google/siglip-so400m-patch14-384's layout (6 px unread), at a small width to keep CI quick
    ("vit_so400m_patch14_siglip_384", "hf_siglip", 384, {"embed_dim": 192, "num_heads": 3, "mlp_ratio": 4.0}),
])
@torch.no_grad()
def test_transformers_dinov2_and_siglip_files_load_with_their_outputs(name, layout, size, smaller, tmp_path, cifar_dir):
    """transformers' Dinov2Model, Dinov2WithRegistersModel, SiglipVisionModel (random init, every parameter perturbed,
    saved with save_pretrained as the hub holds them) load by name into ours: the final tokens and
    the pooled output agree to 1e-4 at the file's size (transformers computes attention its own way)."""
    import transformers

    from tests.conftest import perturb_
    from weights.load import load_pretrained

    cfg = model_config(name, depth=2, img_size=size, **smaller)
    common = dict(hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                  image_size=cfg.img_size, patch_size=cfg.patch_size)
    if cfg.register_tokens:
        reference = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            **common, layerscale_value=1e-5, num_register_tokens=cfg.register_tokens))
    elif layout == "hf_dinov2":
        reference = transformers.Dinov2Model(transformers.Dinov2Config(**common, layerscale_value=1e-5))
    else:
        reference = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
            **common, intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio)))
    perturb_(reference.eval())
    reference.save_pretrained(tmp_path / "hf")
    assert load_pretrained(tmp_path / "hf").layout == layout

    ours = vit.create_model(name, img_size=size, depth=2, **smaller, pretrained=tmp_path / "hf").eval()
    images = real_images(cifar_dir, 2, size)
    expected = reference(pixel_values=images)
    assert max_diff(ours.forward_features(images), expected.last_hidden_state) <= 1e-4
    assert max_diff(ours(images), expected.pooler_output) <= 1e-4  # CLS after the norm / the MAP head
    assert expected.pooler_output.abs().max() > 0.1

    if layout == "hf_siglip":
        assert ours.cfg.activation == "gelu_tanh" != model_config(name).activation  # config.json's, not the name's
    if layout == "hf_siglip" and not smaller:  # that activation travels in a card (a whole model: once)
        from vit.checkpoint import ModelCard, load_model, save_model

        whole = vit.create_model(name, num_classes=2, img_size=32, activation=ours.cfg.activation).eval()
        save_model(tmp_path / "ours.pth", whole, ModelCard(name, 32, ("a", "b"), (0.5,) * 3, (0.5,) * 3,
                                                           activation=whole.cfg.activation))
        loaded, card = load_model(tmp_path / "ours.pth")
        assert card.activation == loaded.cfg.activation == "gelu_tanh"


def test_python_m_vit_lists_every_name_with_its_family_size_and_weights(capsys):
    result = run_cli("vit")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(MODELS)
    assert lines[list(MODELS).index("vit_small_patch14_reg4_dinov2")].split() == [
        "vit_small_patch14_reg4_dinov2", "dinov2_reg", "518", "px", "timm/vit_small_patch14_reg4_dinov2.lvd142m"]
    assert lines[list(MODELS).index("vit_large_patch16_sapiens2")].split()[2] == "1024x768"  # height x width
    from vit.__main__ import main

    with pytest.raises(SystemExit) as exit:  # --help, in process
        main(["--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m vit")


def test_a_checkpoint_that_does_not_fit_its_name_says_which_keys(tmp_path):
    """A fine-tuned file whose weights are not its name's shape (here 2 blocks of a 12-block name)
    is one line naming what is missing, not load_state_dict's bare heading."""
    from vit.checkpoint import CheckpointError, ModelCard, load_model, save_model

    model = vit.create_model("vit_small_patch16_dinov3", num_classes=2, img_size=32, depth=2)
    save_model(tmp_path / "cut.pth", model, ModelCard("vit_small_patch16_dinov3", 32, ("a", "b"), (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(CheckpointError, match=r"weights do not fit vit_small_patch16_dinov3 \(Missing key\(s\).*blocks\.2\.") as error:
        load_model(tmp_path / "cut.pth")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name,smaller", [
    ("vit_small_patch14_reg4_dinov2", {"depth": 4}),  # registers: 5 prefix tokens
    ("eva02_tiny_patch14_224", {"depth": 4}),  # RoPE
    ("vit_base_patch16_siglip_224", {"depth": 3}),  # no CLS token, no prefix at all
    ("vit_wee_patch16_reg1_gap_256", {"depth": 4}),  # the final norm after the pooling: none on tokens
])
@torch.no_grad()
def test_forward_intermediates_options_and_dinov2s_get_intermediate_layers_match_timm(name, smaller, tmp_path, cifar_dir):
    import timm

    path = tmp_path / "model.safetensors"
    size = model_config(name).img_size
    reference = make_timm_file(name, path, img_size=size, **smaller)
    ours = vit.create_model(name, pretrained=path, **smaller).eval()
    images = real_images(cifar_dir, 2, 112 if "dinov2" in name else size)
    if "dinov2" in name:  # (timm resizes its table at each call for another size; ours at load: both once here)
        reference = timm.create_model(name, img_size=112, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                      **smaller).eval()
        ours = vit.create_model(name, img_size=112, pretrained=path, **smaller).eval()
    for options in ({"indices": 2}, {"indices": [0, -1], "output_fmt": "NLC"}, {"indices": [1], "stop_early": True},
                    {"indices": 3, "norm": True, "intermediates_only": True, "return_prefix_tokens": True}):
        mine, theirs = ours.forward_intermediates(images, **options), reference.forward_intermediates(images, **options)
        if not options.get("intermediates_only"):
            assert max_diff(mine[0], theirs[0]) <= TOLERANCE  # the final tokens (after stop_early: that block's)
            mine, theirs = mine[1], theirs[1]
        assert len(mine) == len(theirs)
        for a, b in zip(map(with_prefix, mine), map(with_prefix, theirs)):
            assert max_diff(a[0], b[0]) <= TOLERANCE and (a[1] is None) == (b[1] is None)
    # DINOv2's interface (Meta's defaults: normed; the CLS token apart, registers dropped)
    layers = ours.get_intermediate_layers(images, n=2, reshape=True, return_class_token=ours.cfg.class_token)
    expected = reference.forward_intermediates(images, 2, norm=True, return_prefix_tokens=True, intermediates_only=True)
    for got, want in zip(layers, map(with_prefix, expected)):
        patches, cls = got if ours.cfg.class_token else (got, None)
        assert max_diff(patches, want[0]) <= TOLERANCE
        assert cls is None or max_diff(cls, want[1][:, 0]) <= TOLERANCE
    with pytest.raises(ValueError, match="the model's blocks are 0 to"):
        ours.forward_intermediates(images, indices=[len(ours.blocks)])


@pytest.mark.parametrize("name", ["naflexvit_base_patch16_par_gap", "naflexvit_so150m2_patch16_reg1_map",
                                  "naflexvit_so400m_patch16_radio_v4"])
@torch.no_grad()
def test_naflex_input_of_images_of_different_sizes_and_aspects_matches_timm(name, tmp_path, cifar_dir):
    """NaFlex's own input (vit/naflex.py): four real images of different sizes and aspects packed
    as patches, coordinates and a validity mask; timm runs the padded batch with its attention
    mask, ours each image on its real patches. Same logits; and each equals that image alone."""
    from vit.naflex import pack

    smaller = {"depth": 2, "embed_dim": 192, "num_heads": 3}
    reference = make_timm_file(name, tmp_path / "model.safetensors", img_size=384, **smaller)
    ours = vit.create_model(name, pretrained=tmp_path / "model.safetensors", **smaller).eval()
    pictures = real_images(cifar_dir, 4, 160)
    images = [pictures[0], pictures[1][:, :96, :], pictures[2][:, :64, :144], pictures[3][:, :, :80]]  # 10x10 .. 4x9
    batch = pack(images, 16)
    assert batch["patch_valid"].sum(1).tolist() == [100, 60, 36, 50]
    expected = reference(batch)
    assert expected.abs().max() > 0.1
    assert max_diff(ours.forward_naflex(batch), expected) <= TOLERANCE
    assert max_diff(ours.forward_naflex(**batch)[1], ours(images[1][None])[0]) <= TOLERANCE  # the image alone

    batch["patch_coord"][1, 0] = torch.tensor([5, 0])  # a row out of place: not the image's grid
    with pytest.raises(ValueError, match="not a 6 x 10 grid in rows-first order"):
        ours.forward_naflex(batch)
