"""Bad data, impossible downloads, killed runs, full disks and diverging losses, with real
subprocesses, signals and files."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_TRAIN_ARGS, make_subset, run_cli, run_module, start_training
from train import TrainConfig
from vit.checkpoint import CheckpointError, safe_load
from weights.files import atomic_save
import vit
from weights.load import WeightsError


def long_run_args(data, tmp_path) -> list[str]:
    """A tiny run long enough (400 short epochs) to be interrupted at any point."""
    return ["--data", str(data), "--epochs", "400", "--output-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS, "--batch-size", "8"]


def train_cli(data, tmp_path, *extra):
    return run_cli("train", "--data", str(data), "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                      "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS, "--batch-size", "8", *extra)


def one_line_error(result, *fragments):
    assert result.returncode == 1, result.stdout[-1000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unreadable_training_images_fail_fast_or_are_skipped(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "data", 2, 1)
    (data / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "train" / "dog" / "empty.jpg").write_bytes(b"")
    one_line_error(train_cli(data, tmp_path), "2 unreadable image(s)", "broken.jpg", "--skip-bad-images")
    assert not (tmp_path / "out" / "last.pt").exists()  # failed before any training
    result = train_cli(data, tmp_path, "--skip-bad-images")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 2 unreadable image(s)" in result.stdout


@pytest.mark.parametrize("break_data,fragment", [
    (lambda d: [p.unlink() for p in (d / "train" / "frog").iterdir()], "frog: class folder has no images"),
    (lambda d: (d / "test" / "horse").rename(d / "test" / "pony"), "different classes"),
    (lambda d: [p.unlink() for p in (d / "train").rglob("*.jpg")], "class folder has no images"),
    (lambda d: (d / "test").rename(d / "elsewhere"), "expected train/ and test/ (or val/)"),
])
def test_broken_data_folders_are_refused_before_training(cifar_dir, tmp_path, break_data, fragment):
    data = make_subset(cifar_dir, tmp_path / "data", 2, 1)
    break_data(data)
    one_line_error(train_cli(data, tmp_path), fragment)
    assert not (tmp_path / "out" / "last.pt").exists()


def test_impossible_downloads_are_one_line(tmp_path):
    cifar = run_cli("train", "--data", "cifar10", "--data-root", str(tmp_path), "--device", "cpu",
                       "--pretrained", "none", "--output-dir", str(tmp_path / "out"))
    one_line_error(cifar, "cannot download CIFAR-10", "--data an ImageFolder root", "cifar-10-batches-py")
    missing = run_cli("train", "--data", "/nonexistent/folder", "--device", "cpu",
                         "--output-dir", str(tmp_path / "out"))
    one_line_error(missing, "--data /nonexistent/folder: not 'cifar10' and not a folder")
    assert not (tmp_path / "out").exists()  # a failed start leaves nothing behind


def test_unavailable_pretrained_weights_are_one_line(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "data", 1, 1)
    result = run_module("-m", "train", "--data", str(data), "--model", "vit_tiny_patch16_224", "--pretrained", "default",
                        "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    one_line_error(result, "cannot get 'timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k'", "--pretrained none")
    result = run_cli("train", "--model", "vit_giant", "--data", str(data), "--device", "cpu",
                        "--cache-dir", str(tmp_path / "c"), "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2 and "unknown model 'vit_giant'" in result.stderr  # a flag error (argparse)


def test_bad_flags_are_one_line():
    result = run_cli("train", "--amp", "fp8", "--data", "/tmp")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    result = run_cli("train", "--batch-size", "many")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


SAVER = """
import os, sys, torch
from weights.files import atomic_save
path = sys.argv[1]
for _ in sys.stdin:  # a line: one more saver, forked from this process (torch is imported once; no torch op ran here)
    child = os.fork()
    if child == 0:
        for version in range(10**6):
            atomic_save({"version": version, "state_dict": {"w": torch.full((2_000_000,), float(version))}}, path)
            print(version, flush=True)
        os._exit(0)
    print("saver", child, flush=True)
    os.waitpid(child, 0)
    print("gone", flush=True)
"""


def test_sigkill_during_saving_never_leaves_a_broken_checkpoint(tmp_path):
    """Processes save 8 MB checkpoints back to back; kill each at a random moment, many times.
    Every time, the checkpoint on disk must load and be a whole version."""
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    zygote = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    for _ in range(8):
        zygote.stdin.write("save\n")
        zygote.stdin.flush()
        lines = [zygote.stdout.readline().split()]
        while len(lines) < 2:  # the saver's pid, and at least one version on disk
            lines.append(zygote.stdout.readline().split())
        saver = next(int(words[1]) for words in lines if words[0] == "saver")
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(saver, signal.SIGKILL)
        while zygote.stdout.readline().strip() != "gone":  # the zygote has reaped it
            pass
        checkpoint = safe_load(path)
        version = checkpoint["version"]
        assert torch.equal(checkpoint["state_dict"]["w"], torch.full((2_000_000,), float(version)))
    zygote.stdin.close()
    assert zygote.wait(timeout=60) == 0
    atomic_save({"state_dict": {}}, path)  # the next save sweeps up what the killed savers left
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_background_save_writes_the_state_of_the_moment_and_reports_its_errors(tmp_path):
    from weights.files import BackgroundSaver
    from vit.checkpoint import CheckpointError

    saver, path = BackgroundSaver(), tmp_path / "last.pt"
    weights = torch.zeros(2_000_000)
    saver.save({"state_dict": {"w": weights}, "history": [{"epoch": 1}]}, path)
    weights += 1  # the next optimiser step, while the file is being written
    saver.wait()
    assert torch.equal(safe_load(path)["state_dict"]["w"], torch.zeros(2_000_000))
    saver.save({"state_dict": {"w": weights}}, tmp_path / "missing" / "last.pt")  # a folder that is not there
    with pytest.raises(CheckpointError, match="cannot write"):
        saver.wait()
    saver.wait()  # the error is raised once
    assert torch.equal(safe_load(path)["state_dict"]["w"], torch.zeros(2_000_000))


def test_killed_training_run_resumes_from_its_last_checkpoint(cifar_dir, tmp_path):
    """A second run into the same folder is refused while the first runs (naming its pid); after a
    SIGKILL the first's lock is stale and a --resume takes it over."""
    data = make_subset(cifar_dir, tmp_path / "data", 3, 1)
    # Epoch 3's last.pt is written in the background during epoch 4; the save after epoch 4 first
    # waits for it, so once epoch 5's line is out, the file holds epoch 3 or later (no timing assumed).
    process = start_training(long_run_args(data, tmp_path), until="epoch 5/400:")
    second = run_cli("train", *long_run_args(data, tmp_path))
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"is in use by another run (pid {process.pid})" in second.stderr.strip().splitlines()[-1]
    process.send_signal(signal.SIGKILL)
    process.wait()
    last = safe_load(tmp_path / "out" / "last.pt")
    assert last["epoch"] >= 3
    # The checkpoint a SIGKILL left behind restores into a fresh run (test_train covers a full resume).
    cfg = TrainConfig(data=str(data), epochs=400, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                      model="vit_tiny_patch16_224", pretrained="none", img_size=32, batch_size=8, lr=1e-3,
                      device="cpu", num_workers=2, resume=str(tmp_path / "out" / "last.pt"))
    from train.loop import prepare
    from train.state import restore

    run = prepare(cfg)  # the killed run's lock is stale: taken over
    assert run.lock is not None and (tmp_path / "out" / ".train.lock").read_text().strip() == str(os.getpid())
    epoch, step, _ = restore(run)
    assert (epoch, step) == (last["epoch"], 0)
    run.lock.release()
    assert torch.equal(run.model.state_dict()["head.weight"], last["state_dict"]["head.weight"])


def test_full_disk_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"state_dict": {"w": torch.zeros(10)}, "version": 1}, path)
    code = ("import resource, signal, sys, torch\n"
            "from vit.checkpoint import atomic_save, CheckpointError\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))  # writes past 1 MB fail\n"
            "try:\n"
            f"    atomic_save({{'state_dict': {{'w': torch.ones(1_000_000)}}, 'version': 2}}, {str(path)!r})\n"
            "except CheckpointError as error:\n"
            "    print(error); sys.exit(1)\n")
    result = run_module("-c", code)
    assert result.returncode == 1, result.stderr
    assert "cannot write" in result.stdout and "previous file, if any, is untouched" in result.stdout
    assert safe_load(path)["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cifar_dir, tmp_path, monkeypatch):
    import train.loop as loop
    import train.objectives as objectives

    data = make_subset(cifar_dir, tmp_path / "data", 4, 1)
    cfg = TrainConfig(data=str(data), epochs=3, output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "c"),
                      model="vit_tiny_patch16_224", pretrained="none", img_size=32, batch_size=8, device="cpu",
                      num_workers=1, log_every=1)
    real_evaluate = objectives.evaluate
    calls = []

    def evaluate_then_diverge(forward, *args, **kwargs):
        result = real_evaluate(forward, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # after epoch 1 the weights blow up, as a diverging run's would
            with torch.no_grad():
                next(forward.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(objectives, "evaluate", evaluate_then_diverge)
    with pytest.raises(loop.TrainingError, match="loss became NaN/Inf in epoch 2"):
        loop.train(cfg)
    last = safe_load(tmp_path / "out" / "last.pt")
    assert last["epoch"] == 1 and torch.isfinite(last["state_dict"]["patch_embedding.projection.weight"]).all()


def test_sigterm_saves_last_checkpoint_and_exits_cleanly(cifar_dir, tmp_path):
    data = make_subset(cifar_dir, tmp_path / "data", 3, 1)
    process = start_training(long_run_args(data, tmp_path), until="epoch 2/400:")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert safe_load(tmp_path / "out" / "last.pt")["epoch"] >= 2


def test_a_disk_too_small_for_the_run_is_refused_before_any_data_is_decoded(cifar_dir, tmp_path, monkeypatch):
    """30 MB free for a ViT-Ti run (the fine-tuned model alone is 22 MB, last.pt 65 MB): one line
    saying how much the run writes, how much is free and where, before the images are decoded."""
    import shutil

    from tests.conftest import make_subset
    from train import TrainConfig
    from train.loop import train
    from train.preflight import bytes_to_write
    from vit.families import model_config

    disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=30 * 2**20))
    data = make_subset(cifar_dir, tmp_path / "data", 2, 1)
    cfg = TrainConfig(data=str(data), model="vit_tiny_patch16_224", pretrained="none", img_size=64, epochs=1,
                      device="cpu", output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as error:
        train(cfg)
    model, last = bytes_to_write(model_config("vit_tiny_patch16_224", img_size=64))
    assert round(model / 2**20) == 22 and round(last / 2**20) == 65
    assert str(error.value) == (f"--output-dir: the run writes about {(model + 2 * last) / 2**20:.0f} MB (the fine-tuned "
                                f"model 22 MB, last.pt 65 MB and its next copy), but {tmp_path} has 30 MB free; "
                                "free some space or choose another --output-dir")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()  # nothing decoded, nothing made


def test_a_write_that_fails_for_space_says_so_in_plain_words(tmp_path, monkeypatch):
    """torch.save's own words for a full disk ("unexpected pos ...") become "no space left on
    device"; the previous file stays, no temporary file is left."""
    import errno
    import shutil

    from weights.files import atomic_write

    (tmp_path / "last.pt").write_bytes(b"the previous one")
    disk_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: disk_usage(path)._replace(free=4096))

    def torch_on_a_full_disk(file):
        file.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 31335104 vs 31334992")

    def python_on_a_full_disk(file):
        raise OSError(errno.ENOSPC, "No space left on device")

    for write in (torch_on_a_full_disk, python_on_a_full_disk):
        with pytest.raises(CheckpointError) as error:
            atomic_write(tmp_path / "last.pt", write)
        assert str(error.value).lower() == (f"cannot write {tmp_path / 'last.pt'} (no space left on device); "
                                            "the previous file, if any, is untouched")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and (tmp_path / "last.pt").read_bytes() == b"the previous one"


def test_the_fine_tuned_model_is_written_before_the_final_last_pt(cifar_dir, tmp_path, monkeypatch):
    """At the end the model is saved first: a disk that fills up on the final last.pt has the
    fine-tuned model already."""
    import train.loop as loop
    import train.state as run_state
    from tests.conftest import make_subset
    from train import TrainConfig

    written = []
    monkeypatch.setattr(run_state, "save_model", lambda path, *a, _f=run_state.save_model, **k: (written.append(Path(path).name), _f(path, *a, **k))[1])
    monkeypatch.setattr(run_state, "atomic_save", lambda state, path, _f=run_state.atomic_save: (written.append(Path(path).name), _f(state, path))[1])
    data = make_subset(cifar_dir, tmp_path / "data", 3, 1)
    loop.train(TrainConfig(data=str(data), model="vit_tiny_patch16_224", pretrained="none", img_size=32, epochs=2,
                           batch_size=10, device="cpu", output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache")))
    assert written == ["vit_data_finetuned.pth", "last.pt"]  # epoch 1's last.pt went through the background saver
    assert safe_load(tmp_path / "out" / "last.pt")["epoch"] == 2


# ---------------------------------------------------------------- poisoned weights and cards (hardening round three)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """A ViT-Ti checkpoint at 32 px with 3 classes, as train writes one, and a real image."""
    from tests.conftest import DATA, perturb_
    from vit.checkpoint import ModelCard, save_model

    torch.manual_seed(0)
    model = perturb_(vit.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32))
    path = tmp_path_factory.mktemp("poison") / "vit_small_finetuned.pth"
    save_model(path, model, ModelCard("vit_tiny_patch16_224", 32, ("cat", "dog", "ship"), (0.5,) * 3, (0.5,) * 3,
                                      architecture=model.cfg))
    return path, DATA / "test" / "cat" / "0003.jpg"


def altered(path, tmp_path, name="altered.pth", weights=None, **card):
    checkpoint = torch.load(path, weights_only=True)
    if weights:
        checkpoint["state_dict"] = {**checkpoint["state_dict"], **weights}
    torch.save({**checkpoint, **card}, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(small_checkpoint, tmp_path, value):
    path, image = small_checkpoint
    weight = torch.load(path, weights_only=True)["state_dict"]["blocks.3.mlp.fc1.weight"].clone()
    weight[0, 0] = value
    bad = altered(path, tmp_path, weights={"blocks.3.mlp.fc1.weight": weight})
    for args in (["--image", str(image)], ["--image", str(image), "--json"], ["--data", str(image.parents[1])]):
        result = run_cli("infer", "--checkpoint", str(bad), *args)
        assert result.returncode == 1 and result.stdout == "", result.stdout
        assert "blocks.3.mlp.fc1.weight holds NaN or infinite values" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    with pytest.raises(WeightsError, match="blocks.3.mlp.fc1.weight holds NaN"):
        vit.create_model("vit_tiny_patch16_224", pretrained=bad)


def test_non_finite_outputs_are_an_error_and_json_stays_json(small_checkpoint, monkeypatch):
    """Whatever makes the scores NaN (here a model patched to), no prediction is printed of them."""
    from infer import Classifier
    from infer.predict import NonFiniteOutput

    path, image = small_checkpoint
    classifier = Classifier(path, device="cpu", amp="none", quantize="none")
    monkeypatch.setattr(classifier, "model", lambda inputs: torch.full((len(inputs), 3), float("nan")))
    with pytest.raises(NonFiniteOutput, match="NaN or infinite"):
        classifier.classify([image])


@pytest.mark.parametrize("field,value,message", [
    ("class_names", 7, "class_names is '7' (int), not a list of class names"),
    ("class_names", "cds", "class_names is 'cds' (str), not a list of class names"),
    ("img_size", "32", "img_size is '32' (str), not a positive whole number"),
    ("layer_norm_eps", "tiny", "layer_norm_eps is 'tiny' (str), not a small positive number"),
    ("source_size", -32, "source_size is '-32' (int), not a positive whole number of pixels, or None"),
    ("eval_amp", "fp8", "eval_amp is 'fp8' (str), not one of bf16, fp16, none"),
    ("mean", [0.5], "mean [0.5] is not 3 finite numbers"),
    ("std", [0.5, 0.0, 0.5], "std [0.5, 0.0, 0.5] must be positive"),
    ("state_dict", [1, 2], "its state_dict is a list, not a dict of tensors"),
])
def test_a_malformed_card_is_one_line(small_checkpoint, tmp_path, field, value, message):
    path, image = small_checkpoint
    bad = altered(path, tmp_path, **{field: value})
    result = run_cli("infer", "--checkpoint", str(bad), "--image", str(image))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_foreign_safetensors_metadata_and_odd_files_are_one_line(small_checkpoint, tmp_path):
    import os

    from safetensors.torch import save_file

    path, _ = small_checkpoint
    weights = torch.load(path, weights_only=True)["state_dict"]
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "w.safetensors"),
              metadata={"mean": "not json"})
    for command in (["weights", "inspect", str(tmp_path / "w.safetensors")],):
        result = run_cli(*command)
        assert result.returncode == 1 and "metadata mean='not json' is not JSON" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    with pytest.raises(WeightsError, match="is not JSON"):
        vit.create_model("vit_tiny_patch16_224", pretrained=tmp_path / "w.safetensors")
    os.mkfifo(tmp_path / "pipe.pth")
    for odd, kind in ((tmp_path / "pipe.pth", "a named pipe (FIFO)"), (Path("/dev/zero"), "a device")):
        result = run_cli("infer", "--checkpoint", str(odd), "--image", str(path))
        assert result.returncode == 1 and f"{kind}, not a checkpoint file" in result.stderr, result.stderr
        with pytest.raises(WeightsError, match=kind.replace("(", r"\(").replace(")", r"\)")):
            vit.create_model("vit_tiny_patch16_224", pretrained=odd)


def test_an_output_folder_inside_the_data_is_refused(cifar_dir, tmp_path):
    """The next run would read the plots (curves.png, confusion_matrix.png) as a class's images."""
    data = make_subset(cifar_dir, tmp_path / "data", 2, 1)
    for inside in (data / "train" / "cat" / "run", data):
        result = run_cli("train", "--data", str(data), "--epochs", "1", "--output-dir", str(inside), *TINY_TRAIN_ARGS)
        one_line_error(result, f"--output-dir {inside} is inside --data")
    assert not (data / "train" / "cat" / "run").exists()
