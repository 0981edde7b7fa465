"""The ViT family (vit/families.py) against timm: every name's table entry, and for each family
two names loaded from timm-format files with every parameter perturbed, compared to 1e-5."""

import pytest
import torch

import vit
from tests.conftest import make_timm_file, real_images
from tests.test_parity import TOLERANCE, max_diff, stage_diffs
from vit.families import MODELS, model_config
from weights.convert import convert_timm


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_name_has_timms_architecture_weights_and_normalisation(name):
    """Shapes of every tensor (timm's model built on the meta device, keys converted to ours),
    activation, pooling and LayerNorm epsilon, and the default weights, native size, class count
    and mean/std of timm's pretrained_cfg."""
    import timm

    with torch.device("meta"):
        reference = timm.create_model(name)
        ours = vit.VisionTransformer(model_config(name))
    theirs = {k: tuple(v.shape) for k, v in convert_timm(reference.state_dict()).items()}
    assert theirs == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    # What shapes cannot tell: the MLP's activation, the pooling, the LayerNorms' epsilon.
    block, activations = reference.blocks[0], {"GELU": "gelu", "GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu"}
    assert activations[type(block.mlp.act).__name__] == ours.cfg.activation
    assert reference.global_pool == ours.cfg.pool and block.norm1.eps == ours.cfg.layer_norm_eps
    cfg, spec = timm.models.get_pretrained_cfg(name), MODELS[name]
    assert spec.weights == cfg.hf_hub_id
    assert (spec.mean, spec.std) == (tuple(cfg.mean), tuple(cfg.std))
    assert ours.cfg.img_size == cfg.input_size[-1] and ours.cfg.num_classes == cfg.num_classes


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
]


@pytest.mark.parametrize("name,smaller,other_size", CASES, ids=[case[0] for case in CASES])
@torch.no_grad()
def test_family_member_matches_timm_at_its_size_another_size_and_with_a_new_head(
        name, smaller, other_size, tmp_path, cifar_dir):
    import timm

    path = tmp_path / "model.safetensors"
    native = model_config(name).img_size
    reference = make_timm_file(name, path, img_size=native, **smaller)
    ours = vit.create_model(name, pretrained=path, **smaller).eval()
    assert ours.cfg.img_size == native and ours.cfg.num_classes == reference.num_classes
    images = real_images(cifar_dir, 2, native)
    expected = reference(images)
    assert expected.abs().max() > 0.1  # a real output, not a degenerate one
    assert max_diff(ours(images), expected) <= TOLERANCE

    # Stage by stage, from timm's inputs: prefix tokens and positions, each block, the pooling head.
    mismatches = {stage: diff for stage, diff in stage_diffs(reference, ours, images).items() if diff > TOLERANCE}
    assert not mismatches, f"stages that differ from timm: {mismatches}"

    # Another size: timm resamples the positions as it loads the file; so must we.
    overlay = dict(file=str(path), num_classes=reference.num_classes)
    resized = timm.create_model(name, img_size=other_size, pretrained=True, pretrained_cfg_overlay=overlay,
                                **smaller).eval()
    ours = vit.create_model(name, img_size=other_size, pretrained=path, **smaller).eval()
    assert ours.position_embedding.shape == resized.pos_embed.shape
    images = real_images(cifar_dir, 2, other_size)
    assert max_diff(ours(images), resized(images)) <= TOLERANCE

    # A new 10-class head: timm's starts random, ours at zero; with timm's copied in, equal.
    fresh = timm.create_model(name, img_size=other_size, num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **smaller).eval()
    ours = vit.create_model(name, img_size=other_size, num_classes=10, pretrained=path, **smaller).eval()
    assert torch.count_nonzero(ours.head.weight) == 0
    ours.head.load_state_dict(fresh.head.state_dict())
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
]


@pytest.mark.parametrize("name,img_size,onnx", RUNS, ids=[run[0] for run in RUNS])
def test_family_member_fine_tunes_infers_explains_and_exports(name, img_size, onnx, tmp_path, cifar_dir):
    import timm

    from infer.predict import Classifier
    from tests.conftest import make_subset
    from train import TrainConfig
    from train.loop import train
    from vit.export import ExportError, export

    make_timm_file(name, tmp_path / "model.safetensors", img_size=model_config(name).img_size)
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
    reference = timm.create_model(name, num_classes=10, img_size=img_size, pretrained=True,
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
    from tests.conftest import run_module

    result = run_module("-m", "train", "--model", "vit_small_patch14_dinov2", "--img-size", "32", "--data", "/tmp")
    assert result.returncode == 2 and "not a multiple of vit_small_patch14_dinov2's patch size 14 (e.g. 28)" in result.stderr
    result = run_module("-m", "train", "--model", "vit_small_patch14_dinov3", "--data", "/tmp")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "unknown model 'vit_small_patch14_dinov3'; similar: vit_small_patch14_dinov2" in result.stderr


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


def test_python_m_vit_lists_every_name_with_its_family_size_and_weights():
    from tests.conftest import run_module

    result = run_module("-m", "vit")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(MODELS)
    assert lines[list(MODELS).index("vit_small_patch14_reg4_dinov2")].split() == [
        "vit_small_patch14_reg4_dinov2", "dinov2_reg", "518", "px", "timm/vit_small_patch14_reg4_dinov2.lvd142m"]
