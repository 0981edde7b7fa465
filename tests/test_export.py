"""A model fine-tuned here, exported to timm, transformers and ONNX: each loads in its own
library and gives our logits."""

import json
import re

import pytest
import torch

from tests.conftest import real_images, run_cli, timm_arguments
from vit.checkpoint import load_model


@pytest.fixture(scope="module")
def finetuned(tiny_run):
    """The tiny run's checkpoint (ViT-Ti/16 at 32 px, 10 CIFAR-10 classes), its model and card."""
    path = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    model, card = load_model(path)
    return path, model, card


def export(checkpoint, fmt, out):
    result = run_cli("weights", "export", str(checkpoint), "--format", fmt, str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@torch.no_grad()
def test_timm_export_loads_in_timm_with_the_same_logits(finetuned, tmp_path, cifar_dir):
    import timm

    checkpoint, model, card = finetuned
    said = export(checkpoint, "timm", tmp_path / "model.safetensors")
    # The exact call the command prints:
    call = re.search(r"load it with timm\.(create_model\(.*\))$", said.strip()).group(1)
    reference = eval(f"timm.{call}").eval()
    images = real_images(cifar_dir, 4, card.img_size)
    assert (reference(images) - model(images)).abs().max() <= 1e-5
    assert reference.num_classes == card.num_classes == 10


@torch.no_grad()
def test_hf_export_loads_in_transformers_with_the_same_logits(finetuned, tmp_path, cifar_dir):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    checkpoint, model, card = finetuned
    export(checkpoint, "hf", tmp_path / "hf")
    reference = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    images = real_images(cifar_dir, 4, card.img_size)
    assert (reference(pixel_values=images).logits - model(images)).abs().max() <= 1e-4
    assert [reference.config.id2label[i] for i in range(10)] == list(card.class_names)
    assert reference.config.label2id["cat"] == card.class_names.index("cat")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert list(processor.image_mean) == list(card.mean) and list(processor.image_std) == list(card.std)
    assert processor.size["height"] == card.img_size


def test_onnx_export_runs_in_onnxruntime_and_in_infer_with_the_same_outputs(finetuned, tmp_path, cifar_dir, tiny_run, capsys):
    import onnxruntime

    checkpoint, model, card = finetuned
    export(checkpoint, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # a dynamic batch dimension
        images = real_images(cifar_dir, batch, card.img_size)
        logits = session.run(["logits"], {"images": images.numpy()})[0]
        with torch.no_grad():
            assert (torch.from_numpy(logits) - model(images)).abs().max() <= 1e-4
    stored = json.loads(session.get_modelmeta().custom_metadata_map["vit_card"])
    assert stored["class_names"] == list(card.class_names) and stored["mean"] == list(card.mean)
    # python -m infer takes the .onnx file as it takes the .pth, with the same predictions.
    from infer.__main__ import main as infer  # python -m infer's main, in process

    folder = str(tiny_run["data"] / "test" / "cat")
    capsys.readouterr()
    assert infer(["--checkpoint", str(tmp_path / "model.onnx"), "--image", folder, "--json"]) == 0
    onnx = capsys.readouterr().out
    assert infer(["--checkpoint", str(checkpoint), "--image", folder, "--json"]) == 0
    a, b = json.loads(onnx), json.loads(capsys.readouterr().out)
    assert [r["predictions"][0]["class"] for r in a] == [r["predictions"][0]["class"] for r in b]
    assert max(abs(x["predictions"][0]["confidence"] - y["predictions"][0]["confidence"]) for x, y in zip(a, b)) < 1e-4


def test_bad_exports_are_one_line(tmp_path, finetuned):
    (tmp_path / "cut.pth").write_bytes(finetuned[0].read_bytes()[:5000])
    result = run_cli("weights", "export", str(tmp_path / "cut.pth"), "--format", "onnx", str(tmp_path / "x.onnx"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'cut.pth'}: truncated or not a PyTorch checkpoint")
    assert not (tmp_path / "x.onnx").exists()
    result = run_cli("weights", "export", str(finetuned[0]), "--format", "tflite", str(tmp_path / "x"))
    assert result.returncode == 2 and "invalid choice: 'tflite'" in result.stderr
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    result = run_cli("infer", "--checkpoint", str(tmp_path / "junk.onnx"), "--image", str(finetuned[0]))
    assert result.returncode == 1 and "not an ONNX model exported by this project" in result.stderr


@torch.no_grad()
def test_exports_name_an_activation_other_than_the_names_own(tmp_path, cifar_dir):
    """A ViT fine-tuned from a transformers file that names gelu_tanh: the timm call names it
    (act_layer), the transformers config too (hidden_act), and both compute our logits."""
    import timm  # noqa: F401  (the printed call is evaluated below)
    from transformers import AutoModelForImageClassification

    import vit
    from tests.conftest import perturb_
    from vit.checkpoint import ModelCard, save_model

    model = perturb_(vit.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, activation="gelu_tanh"))
    card = ModelCard("vit_tiny_patch16_224", 32, ("a", "b", "c"), mean=(0.5,) * 3, std=(0.5,) * 3,
                     activation="gelu_tanh")
    save_model(tmp_path / "model.pth", model, card)
    model.eval()
    images = real_images(cifar_dir, 4, 32)
    said = export(tmp_path / "model.pth", "timm", tmp_path / "model.safetensors")
    call = re.search(r"load it with timm\.(create_model\(.*\))$", said.strip()).group(1)
    assert "act_layer='gelu_tanh'" in call
    assert (eval(f"timm.{call}").eval()(images) - model(images)).abs().max() <= 1e-5
    export(tmp_path / "model.pth", "hf", tmp_path / "hf")
    reference = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert reference.config.hidden_act == "gelu_pytorch_tanh"
    assert (reference(pixel_values=images).logits - model(images)).abs().max() <= 1e-5  # erf GELU: 1e-4 apart


@pytest.mark.parametrize("name,size,extra", [
    ("beit_base_patch16_224", 64, {}),  # relative position bias: a table lookup added to the logits
    ("vit_small_patch16_dinov3", 64, {}),  # rotary positions: q and k rotated in the graph
    ("eva02_base_patch14_224", 56, {}),  # timm keeps q/k/v and the SwiGLU halves separate
    ("aimv2_large_patch14_224", 56, {}),  # RMSNorm, SwiGLU, no biases
    ("vit_base_patch16_xp_224", 64, {}),  # parallel block: in_proj = [MLP; q; k; v] rows, mlp_bias apart
    ("vit_dpwee_patch16_reg1_gap_256", 64, {}),  # + differential attention, one out_proj for both branches
    ("vit_small_patch16_18x2_224", 64, {}),  # two branches per block (attns.{j}, ffns.{j})
    ("vit_large_patch16_sapiens2", 64, {"kv_heads": 1, "full_attention_ends": 0}),  # grouped-query: short k, v
])
@torch.no_grad()
def test_the_modern_family_exports_to_timm_and_onnx(name, size, extra, tmp_path, cifar_dir):
    """A small model of each new piece (one narrow block of the name's kind) written in timm's
    layout (timm's model of the same shape loads it: logits to 1e-5), through ONNX (onnxruntime's
    outputs = ours to 1e-4)."""
    import onnxruntime
    import timm

    import vit
    from tests.conftest import perturb_
    from vit.checkpoint import ModelCard
    from infer.export import export_onnx, export_timm

    smaller = dict(depth=1, embed_dim=192, num_heads=3, **extra)
    model = perturb_(vit.create_model(name, num_classes=10, img_size=size, **smaller)).eval()
    card = ModelCard(name, size, tuple(str(i) for i in range(10)), (0.5,) * 3, (0.5,) * 3)
    images = real_images(cifar_dir, 8, size)
    expected = model(images)

    export_timm(model, card, tmp_path / "model.safetensors")
    reference = timm.create_model(name, num_classes=10, img_size=size, pretrained=True, **timm_arguments(smaller),
                                  pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"), num_classes=10))
    assert (reference.eval()(images) - expected).abs().max() <= 1e-5

    export_onnx(model, card, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": images.numpy()})[0]
    assert (torch.from_numpy(logits) - expected).abs().max() <= 1e-4


def test_every_file_the_project_writes_gets_the_mode_open_gives(finetuned, tiny_run, tmp_path):
    """Under a umask of 022 every written file is 0644, as open() makes it: exports in each format,
    a converted checkpoint, and what training wrote (fine-tuned model, last.pt, metrics). safetensors'
    own save_file would make the weights 0600."""
    import os
    import stat

    from infer.export import export as export_model

    checkpoint = finetuned[0]
    previous = os.umask(0o022)
    try:
        export_model(checkpoint, "timm", tmp_path / "timm.safetensors")
        export_model(checkpoint, "hf", tmp_path / "hf")
        export_model(checkpoint, "onnx", tmp_path / "model.onnx")
        result = run_cli("weights", "convert", str(tmp_path / "timm.safetensors"), str(tmp_path / "ours.safetensors"))
        assert result.returncode == 0, result.stderr
    finally:
        os.umask(previous)
    written = [tmp_path / "timm.safetensors", tmp_path / "ours.safetensors", tmp_path / "model.onnx",
               *sorted((tmp_path / "hf").iterdir())]
    assert len(written) >= 6  # hf: config.json, preprocessor_config.json, model.safetensors
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    trained = [tiny_run["out"] / name for name in ("vit_cifar10_finetuned.pth", "last.pt", "metrics.jsonl")]
    for path in trained:  # written by a subprocess under this session's umask
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~previous, path
