"""Inference precision follows the hardware as well as the checkpoint: never emulated bf16 on
a CPU, dynamic int8 where it is the fast substitute, and what each choice does to predictions."""

import pytest
import torch

import infer.predict as predict
import vit.device as device_module
from infer import Classifier
from infer.predict import OptionError, choose_precision
from tests.conftest import run_cli, run_module
from vit.images import expand_paths

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_amx(monkeypatch):
    monkeypatch.setattr(predict, "cpu_has_amx_bf16", lambda: False)


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(predict, "cpu_has_amx_bf16", lambda: True)


@pytest.fixture(scope="module")
def gpu_trained(tiny_run, tmp_path_factory):
    """The tiny run's checkpoint as a GPU run writes it: evaluated in bf16."""
    card = torch.load(tiny_run["out"] / "vit_cifar10_finetuned.pth", weights_only=True)
    path = tmp_path_factory.mktemp("gpu") / "vit_cifar10_finetuned.pth"
    torch.save({**card, "eval_amp": "bf16"}, path)
    return path


def test_a_gpu_trained_checkpoint_never_runs_emulated_bf16_on_a_cpu_without_amx(no_amx):
    chosen = choose_precision(CPU, trained="bf16")
    assert chosen.name == "int8" and "instead of training's bf16" in chosen.note
    assert choose_precision(CPU, trained="fp16").name == "int8"
    fallback = choose_precision(CPU, trained="bf16", quantize="none")
    assert fallback.name == "fp32" and "no AMX" in fallback.note
    assert choose_precision(CPU, trained="bf16", amp="bf16").name == "bf16"  # asked for explicitly


def test_training_precision_is_kept_where_the_hardware_has_it(amx):
    assert choose_precision(CPU, trained="bf16") == predict.Precision("bf16")  # AMX: native, no note
    assert choose_precision(CPU, trained="none") == predict.Precision("fp32")  # a CPU-trained model
    assert choose_precision(CUDA, trained="bf16") == predict.Precision("bf16")
    assert choose_precision(CPU, trained="none", quantize="int8").name == "int8"  # asked for
    with pytest.raises(OptionError, match="CPU only"):
        choose_precision(CUDA, trained="bf16", quantize="int8")
    with pytest.raises(OptionError, match="exclude each other"):
        choose_precision(CPU, trained="bf16", amp="bf16", quantize="int8")


def test_amx_detection_honours_the_capability_caps(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "amx_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert device_module.cpu_has_amx_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not device_module.cpu_has_amx_bf16()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not device_module.cpu_has_amx_bf16()
    monkeypatch.setattr(device_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert not device_module.cpu_has_amx_bf16()


def test_int8_classifier_quantises_the_linear_layers_and_agrees_with_fp32(gpu_trained, tiny_run, no_amx):
    int8 = Classifier(gpu_trained, device="cpu")
    fp32 = Classifier(gpu_trained, device="cpu", quantize="none")
    assert int8.precision.name == "int8" and fp32.precision.name == "fp32"
    dynamic_int8 = torch.ao.nn.quantized.dynamic.Linear
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    depth = int8.model.cfg.depth
    assert sum(isinstance(m, dynamic_int8) for m in int8.model.modules()) == 4 * depth + 1  # qkv, out, fc1, fc2; head
    assert not any(isinstance(m, dynamic_int8) for m in fp32.model.modules())
    paths = expand_paths([tiny_run["data"] / "test"])
    a, b = list(int8.classify(paths)), list(fp32.classify(paths))
    agreement = sum(x.top[0][0] == y.top[0][0] for x, y in zip(a, b)) / len(paths)
    assert agreement >= 0.95, agreement  # benchmarks/README.md: >= 99% over CIFAR-10's 10k test images
    assert max(abs(x.top[0][1] - y.top[0][1]) for x, y in zip(a, b)) < 0.05


def test_amx_runs_the_checkpoint_in_bf16(gpu_trained, amx):
    classifier = Classifier(gpu_trained, device="cpu")
    assert classifier.precision.name == "bf16" and classifier.precision.autocast_dtype == torch.bfloat16


def test_cli_says_once_in_one_line_when_it_overrides_the_checkpoint(gpu_trained, tiny_run):
    """A real subprocess on this machine with its capability capped at AVX2, as on a CPU
    without AMX: the note, once, then the predictions."""
    images = [str(p) for p in expand_paths([tiny_run["data"] / "test" / "cat"])[:5]]
    result = run_module("-m", "infer", "--checkpoint", str(gpu_trained), "--image", *images,
                        env={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "note: int8 instead of training's bf16: this CPU has no AMX, where int8 is fastest "
        "(predictions agree on >= 99% of images; --quantize none for fp32)"]
    assert len(result.stdout.strip().splitlines()) == 5
    cpu_trained = run_module("-m", "infer", "--checkpoint", str(tiny_run["out"] / "vit_cifar10_finetuned.pth"),
                             "--image", *images, env={"ATEN_CPU_CAPABILITY": "avx2"})
    assert cpu_trained.returncode == 0 and cpu_trained.stderr == ""  # fp32 as trained: nothing to say


@pytest.mark.long
def test_prepare_compiles_once_and_later_runs_load_it_with_fp32s_predictions(tiny_run, tmp_path, monkeypatch):
    """`infer --prepare` builds the checkpoint's package for this CPU (PT2E int8, Inductor, AOTInductor:
    infer/compiled.py); a later run loads it, says so, and predicts as fp32 does on nearly every
    image. A job past AUTO_BUILD_IMAGES builds it first by itself; a new checkpoint file gets its own."""
    from infer import compiled
    from infer.predict import Classifier
    from vit.device import fastest_cpu_precision

    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = tiny_run["out"] / "vit_cifar10_finetuned.pth"
    test = tiny_run["data"] / "test"
    result = run_cli("infer", "--checkpoint", str(checkpoint), "--prepare")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("compiled in ") and fastest_cpu_precision() in result.stdout
    assert compiled.existing_package(checkpoint, fastest_cpu_precision()) is not None
    assert run_cli("infer", "--checkpoint", str(checkpoint), "--prepare").stdout.startswith("already compiled")

    fast, fp32 = Classifier(checkpoint, device="cpu"), Classifier(checkpoint, device="cpu", quantize="none")
    assert fast.precision.compiled and fast.precision.name == fastest_cpu_precision()
    assert isinstance(fast.model, compiled.CompiledModel) and fp32.precision.name == "fp32"
    paths = sorted(test.glob("*/*.jpg"))  # 300 images: batches of 16, the last one filled up
    same = [a.top[0][0] == b.top[0][0] for a, b in zip(fast.classify(paths), fp32.classify(paths))]
    assert len(same) == 300 and sum(same) >= 0.97 * len(same)  # (a 6-epoch model: many near-ties)
    result = run_cli("infer", "--checkpoint", str(checkpoint), "--data", str(test))
    assert result.returncode == 0 and f"note: {fastest_cpu_precision()} instead of training's fp32" in result.stderr

    copy = tmp_path / "copy.pth"  # another checkpoint file: no package yet, so a long job builds one first
    copy.write_bytes(checkpoint.read_bytes())
    monkeypatch.setattr("infer.__main__.AUTO_BUILD_IMAGES", 100)
    result = run_cli("infer", "--checkpoint", str(copy), "--data", str(test))
    assert result.returncode == 0 and "compiling" in result.stderr
    assert compiled.existing_package(copy, fastest_cpu_precision()) is not None
    assert run_cli("infer", "--checkpoint", str(checkpoint), "--prepare", "--quantize", "none").returncode == 2
