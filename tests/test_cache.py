"""The compiled-package cache trusts nothing it did not write for this user (infer/cache.py), and
an optional speed-up never stops a job. Each attack of the reliability round is played here: a
folder others can write, planted or broken packages, malformed verdicts, a checkpoint replaced
with the same size and modification time, Ctrl-C, a prepare beside another, another CPU."""

import json
import os
import shutil
import sys

import pytest
import torch

import vit
from infer import cache, compiled
from infer.predict import Classifier
from tests.conftest import make_subset, perturb_, run_cli
from vit.checkpoint import ModelCard, save_model

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def small_checkpoint(path, seed: int = 0, reverse: bool = False):
    """A fine-tuned ViT-Ti (2 blocks, 32 px, CIFAR-10's classes), perturbed so that it predicts
    something; `reverse` names its classes backwards (another model, the same shapes)."""
    torch.manual_seed(seed)
    model = perturb_(vit.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, depth=2), seed)
    names = tuple(reversed(CLASSES)) if reverse else CLASSES
    save_model(path, model, ModelCard("vit_tiny_patch16_224", 32, names, (0.5,) * 3, (0.5,) * 3, source_size=32,
                                      architecture=model.cfg))
    return path


@pytest.fixture
def setting(tmp_path, monkeypatch, cifar_dir):
    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = small_checkpoint(tmp_path / "vit_cifar10_finetuned.pth")
    data = make_subset(cifar_dir, tmp_path / "data", 0, 2)
    return checkpoint, data


def plant(checkpoint, package_bytes: bytes = b"PK\x03\x04 not a package", **changes) -> dict:
    """A verdict and a package put in the cache as a prepare would have left them (or as another
    user or a broken disk might): the package file's recorded hash is its own unless changed."""
    folder = cache.private_dir()
    (folder / "planted.pt2").write_bytes(package_bytes)
    card = ModelCard("vit_tiny_patch16_224", 32, CLASSES, (0.5,) * 3, (0.5,) * 3, source_size=32).to_dict()
    verdict = {"precision": "int8-bf16", "package": "planted.pt2", "guard": 0.0, "img_size": 32, "batch_size": 16,
               "card": card, "img_per_s": {}, "agreement": {}, "close_calls": {}, "checked_on": 20}
    kept = cache.write_verdict(checkpoint, verdict)
    kept.update(changes)
    cache.verdict_path(checkpoint).write_text(json.dumps(kept))
    return kept


def test_a_cache_folder_others_can_write_or_own_is_not_used_at_all(setting, tmp_path):
    checkpoint, data = setting
    plant(checkpoint)
    folder = cache.cache_dir()
    for owner, mode in ((os.getuid(), 0o777), (os.getuid(), 0o770), (65534, 0o700)):
        os.chown(folder, owner, -1)  # (the suite runs as root in CI, as a user may)
        os.chmod(folder, mode)
        with pytest.raises(cache.CacheUnsafe, match="not yours alone"):
            cache.private_dir()
        classifier = Classifier(checkpoint, device="cpu")
        assert not classifier.precision.compiled and isinstance(classifier.model, torch.nn.Module)
        assert len(classifier.notes) == 1 and "not yours alone" in classifier.notes[0]
        result = run_cli("infer", "--checkpoint", str(checkpoint), "--image", str(data / "test"))
        assert result.returncode == 0 and len(result.stdout.splitlines()) == 20
        assert result.stderr.count("\n") == 1 and "not yours alone" in result.stderr
    os.chown(folder, os.getuid(), -1)
    os.chmod(folder, 0o700)
    assert cache.private_dir() == folder


@pytest.mark.parametrize("change,reason", [
    (dict(package="/tmp/elsewhere.pt2"), "not a file name in the cache folder"),
    (dict(package="../planted.pt2"), "not a file name in the cache folder"),
    (dict(package_sha256="0" * 64), "not the one built"),
    (dict(img_size=16), "built for 16 px"),
    (dict(guard="0.1"), "'guard' is missing"),
    (dict(guard=float("nan")), "not a gap"),
    (dict(precision="int4"), "none of"),
    (dict(precision="ort-int8"), "not the kind of file ort-int8 runs"),  # (a .pt2 handed to ONNX Runtime)
    (dict(card={"model_name": "vit_tiny_patch16_224"}), "card is unusable"),
    (dict(guard=0.1, exact_package="../planted.pt2"), "exact_package '../planted.pt2' is not"),
    (dict(guard=0.1, exact_package="planted.onnx"), "exact_package 'planted.onnx' is not"),  # (ours: a .pt2)
    (dict(guard=0.1, exact_package="planted.pt2", exact_package_sha256="0" * 64), "not the one built"),
    (dict(guard=0.1, second="bf16", second_package="../planted.pt2"), "second_package '../planted.pt2' is not"),
    (dict(guard=0.1, second="ort-fp32", second_package="planted.pt2"), "not a ort-fp32 file name"),
    (dict(guard=0.1, second="int4", second_package="planted.pt2"), "second opinion's precision 'int4'"),
    (dict(guard=0.1, second="bf16", second_package=None), "a precision without a package"),
    (dict(guard=0.1, second="bf16", second_package="planted.pt2", second_guard=-1), "second_guard -1"),
    (dict(guard=0.1, second="bf16", second_package="planted.pt2", second_guard=0.05, second_package_sha256="0" * 64),
     "not the one built"),
])
def test_a_planted_or_malformed_verdict_is_one_note_and_the_model_as_trained(setting, change, reason):
    checkpoint, data = setting
    plant(checkpoint, **change)
    with pytest.raises(cache.VerdictUnusable, match=reason):
        cache.read_verdict(checkpoint)
    classifier = Classifier(checkpoint, device="cpu")
    assert isinstance(classifier.model, torch.nn.Module) and not classifier.precision.compiled
    assert len(classifier.notes) == 1 and reason in classifier.notes[0]
    predictions = classifier.classify(sorted((data / "test").rglob("*.jpg")))
    assert len(predictions) == 20 and all(p.top for p in predictions)


def test_a_verdict_without_its_guard_or_with_a_broken_package_runs_the_model_as_trained(setting):
    checkpoint, data = setting
    verdict = plant(checkpoint)
    del verdict["guard"]
    cache.verdict_path(checkpoint).write_text(json.dumps(verdict))
    assert "'guard' is missing" in Classifier(checkpoint, device="cpu").notes[0]
    plant(checkpoint)  # a package whose hash is its own, but garbage (a truncated file, a broken build)
    classifier = Classifier(checkpoint, device="cpu")
    assert isinstance(classifier.model, torch.nn.Module) and "cannot be loaded" in classifier.notes[0]
    assert len(classifier.classify(sorted((data / "test").rglob("*.jpg")))) == 20


def test_new_weights_with_the_old_size_and_modification_time_are_not_served_the_old_package(setting, tmp_path):
    """What `cp -p`, rsync, tar or unzip of another version gives: same size, same mtime."""
    checkpoint, data = setting
    plant(checkpoint)
    assert cache.read_verdict(checkpoint) is not None  # (the planted verdict stands for these contents)
    info = checkpoint.stat()
    small_checkpoint(checkpoint, seed=1, reverse=True)  # other weights, the classes reversed
    os.utime(checkpoint, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert checkpoint.stat().st_size == info.st_size and checkpoint.stat().st_mtime_ns == info.st_mtime_ns
    assert cache.read_verdict(checkpoint) is None  # stale: not prepared
    classifier = Classifier(checkpoint, device="cpu")
    assert classifier.class_names == list(reversed(CLASSES)) and not classifier.precision.compiled


def test_another_cpu_finds_no_verdict(setting, monkeypatch):
    checkpoint, _ = setting
    plant(checkpoint)
    flags = cache.cpu.cpu_flags()
    monkeypatch.setattr(cache.cpu, "cpu_flags", lambda: flags | {"avx10_2"})  # same name, another instruction set
    assert cache.read_verdict(checkpoint) is None


def test_a_package_refuses_an_input_of_another_shape_before_its_code_runs():
    called = []
    model = compiled.CompiledModel.__new__(compiled.CompiledModel)
    model.run, model.img_size, model.batch_size = (lambda x: called.append(x)), 32, 16
    for shape in ((2, 3, 16, 16), (2, 3, 64, 64), (2, 1, 32, 32), (3, 32, 32)):
        with pytest.raises(ValueError, match=r"reads \(B, 3, 32, 32\)"):
            model(torch.zeros(shape))
    assert not called


def test_ctrl_c_during_prepare_leaves_nothing_and_says_one_line(setting, monkeypatch):
    checkpoint, data = setting
    built = []

    def interrupted(model, img_size, precision, path, batch_size=16):
        path.write_bytes(b"a package")  # the first is built...
        built.append(path)
        if len(built) == 2:
            raise KeyboardInterrupt  # ... the second is interrupted
    monkeypatch.setattr(compiled, "build", interrupted)
    monkeypatch.setattr("infer.prepare.CompiledModel", lambda path, size: Classifier(checkpoint, device="cpu",
                                                                                       quantize="none").model)
    monkeypatch.setattr("infer.prepare.cpu_precisions", lambda: ["int8-bf16", "bf16", "fp32"])
    result = run_cli("infer", "--checkpoint", str(checkpoint), "--prepare", "--data", str(data / "test"))
    assert result.returncode == 130 and result.stderr.strip() == "stopped (Ctrl-C); nothing half-built was kept"
    assert not list(cache.cache_dir().glob("*.pt2")) and not cache.verdict_path(checkpoint).exists()


def test_a_prepare_deletes_only_its_own_packages(setting, monkeypatch):
    """Another prepare of the same checkpoint, running beside this one, keeps the package it chose."""
    checkpoint, data = setting
    other = cache.new_package_path(checkpoint, "bf16")
    other.write_bytes(b"the other prepare's package")
    assert cache.new_package_path(checkpoint, "bf16") != other  # each build its own name

    def fake_build(model, img_size, precision, path, batch_size=16):
        path.write_bytes(b"ours")
    monkeypatch.setattr(compiled, "build", fake_build)
    monkeypatch.setattr("infer.prepare.CompiledModel", lambda path, size: Classifier(checkpoint, device="cpu",
                                                                                       quantize="none").model)
    monkeypatch.setattr("infer.prepare.cpu_precisions", lambda: ["int8-bf16", "bf16", "fp32"])
    monkeypatch.setattr("infer.precision.AGREEMENT", 1.01)  # nothing agrees: every package of ours deleted
    assert run_cli("infer", "--checkpoint", str(checkpoint), "--prepare", "--data", str(data / "test")).returncode == 0
    assert [p.name for p in cache.cache_dir().glob("*.pt2")] == [other.name]


def test_a_long_job_without_torchao_or_a_usable_cache_classifies_every_image(setting, monkeypatch, tmp_path):
    """The automatic preparation is a speed-up: without the extra (torchao), or with a cache it may
    not use, one line says so and every image is classified as the model was trained."""
    checkpoint, data = setting
    monkeypatch.setattr("infer.__main__.AUTO_BUILD_IMAGES", 10)
    for name in [m for m in sys.modules if m == "torchao" or m.startswith("torchao.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao: ImportError, as on the default install
    result = run_cli("infer", "--checkpoint", str(checkpoint), "--data", str(data / "test"))
    assert result.returncode == 0, result.stderr
    assert "top-1: " in result.stdout and "(20 images)" in result.stdout
    notes = result.stderr.strip().splitlines()
    assert len(notes) == 2 and "needs torchao" in notes[1] and "classifying with the model as trained" in notes[1]
    monkeypatch.undo()
    monkeypatch.setenv("VIT_CACHE_DIR", str(tmp_path / "shared"))
    monkeypatch.setattr("infer.__main__.AUTO_BUILD_IMAGES", 10)
    (tmp_path / "shared" / "compiled").mkdir(parents=True)
    os.chmod(tmp_path / "shared" / "compiled", 0o777)
    result = run_cli("infer", "--checkpoint", str(checkpoint), "--data", str(data / "test"))
    assert result.returncode == 0 and "(20 images)" in result.stdout
    assert result.stderr.count("\n") == 1 and "not yours alone" in result.stderr


def test_the_cache_folder_is_made_private(setting):
    folder = cache.private_dir()
    assert folder.stat().st_mode & 0o777 == 0o700 and folder.stat().st_uid == os.getuid()
    shutil.rmtree(folder)
