"""The converter and loader: key maps, file formats, the HF cache, and errors that explain."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import vit
from tests.conftest import PLAIN_VITS, REPO, make_timm_file, perturb_, real_images, run_cli
from weights import LAYOUTS, WeightsError, load_pretrained


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model.safetensors"
    return make_timm_file("vit_tiny_patch16_224", path), path


@pytest.mark.parametrize("name", PLAIN_VITS)  # the other families: test_families.py
def test_key_map_covers_every_timm_tensor(name):
    import timm

    with torch.device("meta"):  # keys and shapes only: no values needed
        timm_keys = timm.create_model(name, pretrained=False).state_dict()
        ours = vit.create_model(name).state_dict()
    converted = LAYOUTS["timm"].to_ours(timm_keys)
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in ours.items()}


def test_convert_cli_roundtrip(tiny_file, tmp_path, cifar_dir):
    timm_model, path = tiny_file
    result = run_cli("weights", "convert", str(path), str(tmp_path / "ours.safetensors"))
    assert result.returncode == 0, result.stderr
    ours = vit.create_model("vit_tiny_patch16_224", pretrained=tmp_path / "ours.safetensors").eval()
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        assert (ours(images) - timm_model(images)).abs().max() <= 1e-5
    assert load_pretrained(tmp_path / "ours.safetensors").layout == "ours"


def test_keymap_command_prints_the_table():
    result = run_cli("weights", "keymap")
    assert result.returncode == 0
    assert "blocks.{i}.attn.proj.weight" in result.stdout and "attention.out_proj.weight" in result.stdout
    assert len(result.stdout.splitlines()) == len(LAYOUTS["timm"].table)
    result = run_cli("weights", "keymap", "--layout", "hf_siglip")
    assert result.returncode == 0 and "head.attention.in_proj_weight[kv]" in result.stdout


def test_wrong_architecture_lists_what_does_not_fit(tiny_file):
    _, path = tiny_file
    with pytest.raises(WeightsError, match=r"wrong shape: .*patch_embedding.projection.weight \(192, 3, 16, 16\) vs model \(384"):
        vit.create_model("vit_small_patch16_224", pretrained=path)
    with pytest.raises(WeightsError, match=r"missing: blocks.12"):  # tiny has 12 blocks, large 24
        vit.create_model("vit_large_patch16_224", pretrained=path)


def test_truncated_and_foreign_files_are_clear_errors(tiny_file, tmp_path):
    _, path = tiny_file
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable .safetensors file"):
        load_pretrained(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="not a ViT checkpoint of a known layout"):
        load_pretrained(foreign)
    with pytest.raises(WeightsError, match="no such file"):
        load_pretrained(tmp_path / "absent.safetensors")


def test_impossible_download_is_one_line_naming_alternatives(tmp_path):
    result = run("-m", "weights", "convert", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
                 str(tmp_path / "out.safetensors"),
                 env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "local checkpoint" in message and "HF_HUB_OFFLINE=1" in message and "as SRC" in message
    assert "--pretrained" not in message  # train's flag: convert names its own argument


def test_default_weights_come_from_a_prefilled_hf_cache_offline(tiny_file, tmp_path, cifar_dir):
    """The layout huggingface_hub itself writes: models--org--name/{refs/main, snapshots/<rev>/}."""
    timm_model, path = tiny_file
    repo = tmp_path / "hub" / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(path.read_bytes())
    (snapshot / "config.json").write_text(json.dumps({"pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}))
    code = ("import vit, torch; m = vit.create_model('vit_tiny_patch16_224', pretrained='default'); "
            "print(m.pretrained_cfg['mean']); torch.save(m.state_dict(), %r)" % str(tmp_path / "sd.pt"))
    result = run("-c", code, env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(0.1, 0.2, 0.3)"
    ours = vit.create_model("vit_tiny_patch16_224").eval()
    ours.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        assert (ours(images) - timm_model(images)).abs().max() <= 1e-5


@torch.no_grad()
def test_hugging_face_transformers_checkpoint_matches_transformers(tmp_path, cifar_dir):
    from transformers import ViTConfig as HFConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = HFConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                      image_size=224, patch_size=16, num_labels=10)  # layer_norm_eps: HF's 1e-12
    reference = perturb_(ViTForImageClassification(config)).eval()
    reference.save_pretrained(tmp_path / "hf")
    weights = load_pretrained(tmp_path / "hf")
    assert weights.layout == "hf" and weights.layer_norm_eps == 1e-12
    cfg = vit.ViTConfig(embed_dim=192, depth=4, num_heads=3, num_classes=10, layer_norm_eps=1e-12)
    ours = vit.VisionTransformer(cfg).eval()
    ours.load_state_dict(weights.state_dict)
    images = real_images(cifar_dir, 3, 224)
    expected = reference(pixel_values=images).logits
    assert (ours(images) - expected).abs().max() <= 1e-5
    hidden = reference.vit(pixel_values=images).last_hidden_state
    assert (ours.forward_features(images) - hidden).abs().max() <= 1e-5


def test_pretrained_pth_with_a_code_payload_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"cls_token": Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refused, it holds Python objects other than weights"):
        vit.create_model("vit_tiny_patch16_224", pretrained=tmp_path / "evil.pth")
    assert not marker.exists()
