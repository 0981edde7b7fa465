"""A newcomer's first hour: the quick start, the hub (real download code against a local
server; failing fast and in one line without one), flags and help, signals mid-step, inputs
that used to slip through, and what the end of a run says. Real subprocesses, real files."""

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CLASSES, DATA, REPO, TINY_TRAIN_ARGS, make_subset, make_timm_file, run_cli, run_module
from tests.fake_hub import FakeHub
from train.preflight import QUICK_START
from infer.images import load_image

TINY_HUB_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # DEFAULT_PRETRAINED of the tiny model


def one_line(result, code: int) -> str:
    assert result.returncode == code, result.stdout[-1000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# ---------------------------------------------------------------- the quick start


@pytest.mark.long
def test_readme_quick_start_runs_offline_on_cpu(tmp_path):
    """The README's offline quick-start command, exactly as written there, on the real data."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^(python -m train --data \.\./shared/data/cifar10-jpg .*)$", readme, re.M).group(1)
    args = shlex.split(command)[1:]
    args[args.index("--data") + 1] = str(DATA)
    result = run_module(*args, "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                        env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert QUICK_START in command and "--pretrained none" in command  # what the slow-run warning advises
    card = torch.load(tmp_path / "out" / "vit_cifar10_finetuned.pth", weights_only=True)
    assert card["metrics"]["test_acc"] >= 0.15  # 10 classes, 1000 test images: chance is 10% +- 1%
    assert "warning: " not in result.stdout  # the quick start is not a slow configuration
    # its 3,000 images make 23 full batches of 128: the header says so, and the bar's figures are
    # read inside every epoch too, not only at its first and last step (log_every 25 > 23 steps)
    assert "each epoch trains on 2,944 of the 3,000 training images (23 full batches of 128" in result.stdout
    records = torch.load(tmp_path / "out" / "last.pt", weights_only=True)["history"]  # the bar's readings too
    for epoch in range(3):
        inside = [r for r in records if r.get("kind") == "step" and r["epoch"] == epoch
                  and epoch * 23 + 1 < r["step"] < (epoch + 1) * 23]
        assert inside, records

    # ... and the README's next command, on the model this run wrote: its answer has the README's form
    command = re.search(r"^(python -m infer --checkpoint runs/quick/\S+ --image \S+ --topk 3)\n# (.*)$", readme, re.M)
    args = shlex.split(command.group(1).replace("runs/quick", str(tmp_path / "out")).replace(
        "../shared/data/cifar10-jpg", str(DATA)))[1:]
    answer = run_cli(*args[1:])  # args: -m infer ...
    assert answer.returncode == 0, answer.stderr[-2000:]
    form = r"^(\S+): (\w+) \(\d+\.\d%\), (\w+) \(\d+\.\d%\), (\w+) \(\d+\.\d%\)$"
    said, shown = re.match(form, answer.stdout.strip()), re.match(form, command.group(2))
    assert said and shown and said.group(1) == str(DATA / "test" / "cat" / "0003.jpg")
    assert set(said.groups()[1:]) <= set(CLASSES) and set(shown.groups()[1:]) <= set(CLASSES)


def test_end_of_run_lists_what_was_written_and_the_next_command(tiny_run):
    out = tiny_run["out"]
    tail = tiny_run["stdout"].strip().splitlines()[-3:]
    assert tail[0].startswith(f"saved {out / 'vit_cifar10_finetuned.pth'}")
    for name in ("vit_cifar10_finetuned.pth", "last.pt", "metrics.jsonl", "curves.png", "confusion_matrix.png"):
        assert name in tail[1] and (out / name).is_file()
    command = tail[2].removeprefix("next: ").split("   ")[0].replace("IMAGE_OR_FOLDER", str(tiny_run["data"] / "test" / "cat"))
    result = subprocess.run(shlex.split(command.replace("python", sys.executable, 1)), cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.count("\n") == 30, result.stderr  # it works as printed


def test_a_slow_configuration_is_announced_with_an_estimate():
    """The forecast is measured on this machine: ViT-B/16 at 224 px on 50k images on a CPU
    takes hours per epoch; the quick start's tiny model at 64 px on 3k images does not."""
    from train.preflight import epoch_warning, forecast_seconds_per_image
    from vit.families import model_config

    cpu = torch.device("cpu")
    slow = epoch_warning(forecast_seconds_per_image(model_config("vit_base_patch16_224"), cpu, None), 50_000)
    assert slow is not None and re.search(r"about \d+\.\d h", slow)
    assert QUICK_START in slow
    quick = forecast_seconds_per_image(model_config("vit_tiny_patch16_224", img_size=64), cpu, None)
    assert epoch_warning(quick, 3_000) is None


# ---------------------------------------------------------------- the hub


def test_pretrained_default_downloads_through_the_real_hub_code(tmp_path, cifar_dir):
    """A local server plays the hub (HF_ENDPOINT): the code a user with network runs downloads
    timm's file into the HF cache, loads it exactly, and a second run uses the cache only."""
    timm_model = make_timm_file("vit_tiny_patch16_224", tmp_path / "model.safetensors")
    code = ("import torch, vit; m = vit.create_model('vit_tiny_patch16_224', pretrained='default').eval(); "
            f"torch.save(m.state_dict(), {str(tmp_path / 'ours.pt')!r}); print(m.pretrained_cfg['source'])")
    env = {"HF_ENDPOINT": None, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "0"}
    with FakeHub({f"{TINY_HUB_ID}/model.safetensors": tmp_path / "model.safetensors"}) as hub:
        env["HF_ENDPOINT"] = hub.url
        first = run_module("-c", code, env=env)
        assert first.returncode == 0, first.stderr[-2000:]
        assert ("GET", f"/{TINY_HUB_ID}/resolve/main/model.safetensors") in hub.requests
        assert first.stdout.strip().startswith(str(tmp_path / "hub"))
        asked = [r for r in hub.requests if TINY_HUB_ID in r[1]]
        second = run_module("-c", code, env=env)
        assert second.returncode == 0 and [r for r in hub.requests if TINY_HUB_ID in r[1]] == asked  # cached
    from tests.conftest import real_images
    import vit

    ours = vit.create_model("vit_tiny_patch16_224").eval()
    ours.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True))
    images = real_images(cifar_dir, 2, 224)
    with torch.no_grad():
        assert (ours(images) - timm_model(images)).abs().max() <= 1e-5


@pytest.mark.timing
def test_unreachable_hub_fails_in_one_whole_line_before_any_data_is_decoded(tmp_path):
    """No network (the endpoint refuses connections): one line, whole, in flag terms, with no
    retry noise, and before the 60k images of --data are decoded (the cache stays empty)."""
    started = time.perf_counter()
    result = run_module("-m", "train", "--data", str(DATA), "--model", "vit_tiny_patch16_224", "--device", "cpu",
                        "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub")})
    seconds = time.perf_counter() - started
    message = one_line(result, 1)
    assert message.startswith(f"error: cannot get '{TINY_HUB_ID}' from the Hugging Face hub (no network")
    for alternative in ("--pretrained path/to/model.safetensors", "HF_HUB_OFFLINE=1", "--pretrained none"):
        assert alternative in message
    assert message.endswith("random weights") and "Retry" not in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
    assert seconds < 30, seconds  # huggingface_hub alone retries for ~25 s; decoding would add more


def test_hub_advice_names_each_entry_points_own_argument(tmp_path):
    """The same unreachable hub, asked by `weights convert` and by the Python API: each gets the
    ways around it in its own terms (SRC; pretrained=...), never train's --pretrained."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub")}
    convert = run_module("-m", "weights", "convert", TINY_HUB_ID, str(tmp_path / "out.safetensors"), env=env)
    message = one_line(convert, 1)
    assert message.startswith(f"error: cannot get '{TINY_HUB_ID}'") and "as SRC" in message and "--pretrained" not in message
    api = run_module("-c", "import vit; vit.create_model('vit_tiny_patch16_224', pretrained='default')", env=env)
    raised = api.stderr.strip().splitlines()[-1]
    assert raised.startswith("weights.load.HubUnavailable: cannot get")
    assert "pretrained='path/to/model.safetensors'" in raised and "pretrained=None" in raised and "--pretrained" not in raised


# ---------------------------------------------------------------- flags and help


@pytest.mark.parametrize("module,args,fragment", [
    ("train", ["--amp", "bf17"], "argument --amp: invalid choice: 'bf17'"),
    ("train", ["--model", "vit_tiny_patch16_224", "--img-size", "30"], "argument --img-size: 30 is not a multiple"),
    ("train", ["--model", "vit_giant"], "argument --model: unknown model 'vit_giant'"),
    ("train", ["--epochs", "0"], "argument --epochs: 0 is not a positive number"),
    ("train", ["--device", "gpu"], "argument --device: 'gpu'"),
    ("infer", ["--checkpoint", "x.pth", "--image", "x.jpg", "--topk", "0"], "argument --topk: 0 is not a positive number"),
])
def test_flag_errors_are_argparse_lines_with_exit_2(module, args, fragment):
    message = one_line(run_cli(module, *args), 2)
    assert fragment in message and "img_size" not in message


def test_topk_beyond_the_classes_is_a_flag_error(tiny_run):
    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    image = str(tiny_run["data"] / "test" / "cat" / "0000.jpg")
    message = one_line(run_cli("infer", "--checkpoint", checkpoint, "--image", image, "--topk", "20"), 2)
    assert "argument --topk: choose 1 to 10" in message


@pytest.mark.parametrize("module", ["train", "infer"])
def test_every_flag_has_help_that_explains_its_default(module):
    parser = __import__(f"{module}.__main__", fromlist=["build_parser"]).build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and "None" not in action.help, action.option_strings
        if action.nargs != 0 and action.default is not None and not action.required:  # flags taking a value
            assert "default" in action.help, action.option_strings


# ---------------------------------------------------------------- signals mid-step


def slow_step_run(cifar_dir, tmp_path):
    """ViT-Ti/16 at 448 px on a CPU: each step of 8 images (785 tokens each) takes seconds, and
    last.pt stays small (ViT-B's with its optimiser state is 1 GB to write)."""
    data = make_subset(cifar_dir, tmp_path / "data", 3, 1)
    args = ["--data", str(data), "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img-size", "448",
            "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--num-workers", "1",
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    process = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("memory plan per CPU process")
    assert process.stdout.readline().startswith("vit_tiny_patch16_224 @ 448px on cpu")
    text, _ = read_stderr_until(process, "first step", timeout=120)  # the bar, shown as the first step starts
    assert "first step" in text, text[-2000:]
    time.sleep(0.3)  # into it (whatever else the machine is running meanwhile)
    return process


def read_stderr_until(process, fragment: str, timeout: float) -> tuple[str, float]:
    """Raw stderr bytes (no buffered readline, which can sit on text already read) until they
    hold `fragment`; returns (text so far, seconds taken)."""
    import os
    import select

    started, data = time.perf_counter(), b""
    while fragment.encode() not in data and time.perf_counter() - started < timeout:
        if select.select([process.stderr], [], [], 0.1)[0]:
            chunk = os.read(process.stderr.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace"), time.perf_counter() - started


def test_sigint_before_training_is_one_line(cifar_dir, tmp_path):
    """Ctrl-C while the blocks compile and the images decode (before any step): exit 130 with
    one line, no traceback, no output folder."""
    from tests.conftest import start_training

    data = make_subset(cifar_dir, tmp_path / "cifar10", 3, 2)
    process = start_training(["--data", str(data), "--output-dir", str(tmp_path / "out"), "--cache-dir",
                              str(tmp_path / "cache"), *TINY_TRAIN_ARGS, "--compile"], until="compiling the encoder block")
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "stopped by SIGINT outside the training steps; every file written so far is complete"
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


@pytest.mark.timing
@pytest.mark.long
def test_sigint_mid_step_is_answered_at_once_then_stops_after_the_step(cifar_dir, tmp_path):
    process = slow_step_run(cifar_dir, tmp_path)
    process.send_signal(signal.SIGINT)
    text, seconds = read_stderr_until(process, "SIGINT: stopping once the current step ends", timeout=30)
    assert "SIGINT: stopping once the current step ends" in text, text[-2000:]
    assert seconds < 5 and process.poll() is None  # answered while the step still runs
    rest = process.communicate(timeout=300)[1] + text
    assert process.returncode == 128 + signal.SIGINT, rest[-2000:]
    assert "stopped by SIGINT" in rest and "--resume" in rest and "Traceback" not in rest
    last = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (0, 1)  # the step in progress was finished, then saved


@pytest.mark.timing
def test_a_second_signal_stops_at_once_without_saving(cifar_dir, tmp_path):
    process = slow_step_run(cifar_dir, tmp_path)
    process.send_signal(signal.SIGTERM)
    text, _ = read_stderr_until(process, "SIGTERM: stopping", timeout=30)
    assert "SIGTERM: stopping" in text
    process.send_signal(signal.SIGTERM)
    started = time.perf_counter()
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and time.perf_counter() - started < 5
    assert "stopped without saving" in rest and not (tmp_path / "out" / "last.pt").exists()


# ---------------------------------------------------------------- inputs


def test_empty_folder_given_to_infer_is_an_error_naming_it(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    for folder in ("empty", "notes"):
        result = run_cli("infer", "--checkpoint", checkpoint, "--image", str(tmp_path / folder))
        assert result.returncode == 1 and result.stdout == ""
        assert f"{tmp_path / folder}: is a folder with no image files" in result.stderr


def test_hidden_folders_are_ignored_by_training_and_by_infer_data(tiny_run, tmp_path, cifar_dir):
    data = make_subset(cifar_dir, tmp_path / "data", 2, 2)
    for split in ("train", "test"):
        hidden = data / split / ".ipynb_checkpoints"
        hidden.mkdir()
        shutil.copyfile(cifar_dir / "test" / "cat" / "0000.jpg", hidden / "0000-checkpoint.jpg")
    (data / "test" / "cat" / ".thumbs").mkdir()
    (data / "test" / "cat" / ".thumbs" / "x.jpg").write_bytes(b"not an image")
    trained = run_cli("train", "--data", str(data), "--epochs", "1", "--output-dir", str(tmp_path / "out"),
                         "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS, "--batch-size", "4")
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = str(tiny_run["out"] / "vit_cifar10_finetuned.pth")
    evaluated = run_cli("infer", "--checkpoint", checkpoint, "--data", str(data / "test"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "(20 images)" in evaluated.stdout


PIL_MODES = {  # mode -> (file suffix, how to make a uniform image of it)
    "1": (".png", lambda size: Image.new("1", size, 1)),
    "L": (".png", lambda size: Image.new("L", size, 200)),
    "P": (".gif", lambda size: Image.new("RGB", size, (200, 40, 90)).convert("P", palette=Image.ADAPTIVE)),
    "RGB": (".jpg", lambda size: Image.new("RGB", size, (200, 40, 90))),
    "RGBA": (".png", lambda size: Image.new("RGBA", size, (200, 40, 90, 255))),
    "LA": (".png", lambda size: Image.new("LA", size, (200, 255))),
    "I;16": (".png", lambda size: Image.fromarray(np.full(size[::-1], 200 * 257, dtype=np.uint16))),
    "I": (".tiff", lambda size: Image.new("I", size, 200)),
    "F": (".tiff", lambda size: Image.fromarray(np.full(size[::-1], 200 / 255, dtype=np.float32))),
    "CMYK": (".tiff", lambda size: Image.new("RGB", size, (200, 40, 90)).convert("CMYK")),
}
EXPECTED_RGB = {"1": (255,) * 3, "L": (200,) * 3, "LA": (200,) * 3, "I;16": (200,) * 3, "I": (200,) * 3,
                "F": (200,) * 3}


@pytest.mark.parametrize("mode", list(PIL_MODES))
@pytest.mark.parametrize("size", [(40, 30), (3000, 2000)])  # 3000 x 2000 triggers the reduced decode
def test_every_pil_mode_loads_at_every_size(mode, size, tmp_path):
    suffix, make = PIL_MODES[mode]
    path = tmp_path / f"image{suffix}"
    make(size).save(path)
    pixels = load_image(path, 32)
    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 3
    if size[0] > 1000:
        assert max(pixels.shape[1:]) < 400  # reduced while decoding, not kept at 3000 x 2000
    expected = torch.tensor(EXPECTED_RGB.get(mode, (200, 40, 90)), dtype=torch.float32)
    assert (pixels.float().mean(dim=(1, 2)) - expected).abs().max() <= 3, pixels.float().mean(dim=(1, 2))


def large_image_folder(cifar_dir, root):
    for split, count in (("train", 8), ("val", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.open(cifar_dir / "test" / name / f"{i:04d}.jpg").resize((80, 80)).save(root / split / name / f"{i}.png")
    return root


def test_unreadable_large_images_are_reported_before_training(cifar_dir, tmp_path):
    root = large_image_folder(cifar_dir, tmp_path / "pets")
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    args = ["train", "--data", str(root), "--epochs", "1", "--output-dir", str(tmp_path / "out"),
            *TINY_TRAIN_ARGS, "--batch-size", "4"]
    message = one_line(run_cli(*args), 1)
    assert "2 unreadable image(s)" in message and "broken.png" in message and "--skip-bad-images" in message
    assert not (tmp_path / "out").exists()
    skipped = run_cli(*args, "--skip-bad-images")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "skipped 2 unreadable image(s)" in skipped.stdout


def test_caches_follow_xdg_and_tests_keep_them_out_of_the_home_folder(tmp_path):
    """Decoded images are cached under $XDG_CACHE_HOME (else ~/.cache); the test session points it,
    Hugging Face's and torch's caches at a temporary folder, so a test run writes nothing in ~."""
    from tests.conftest import CACHE_HOME
    from train.datasets import default_cache_dir

    assert default_cache_dir() == CACHE_HOME / "vit-from-scratch" and not CACHE_HOME.is_relative_to(Path.home())
    code = "from train.datasets import default_cache_dir; print(default_cache_dir())"
    assert run_module("-c", code, env={"XDG_CACHE_HOME": str(tmp_path)}).stdout.strip() == str(tmp_path / "vit-from-scratch")
    assert run_module("-c", code, env={"XDG_CACHE_HOME": ""}).stdout.strip() == str(Path.home() / ".cache" / "vit-from-scratch")


@pytest.mark.parametrize("module", ["train", "infer", "benchmarks.model", "benchmarks.levers", "benchmarks.train"])
def test_every_cli_calls_a_device_it_cannot_use_a_usage_error(module, capsys):
    """One rule for every command: a --device that is mistyped, or that this machine cannot give,
    is a usage error (exit status 2, one line naming --device), before anything is loaded. (In
    process: each command's main(argv), whose SystemExit is the status the process exits with.)"""
    import importlib

    main = importlib.import_module(module if module.startswith("benchmarks") else f"{module}.__main__").main
    devices = ["tpu"] if torch.cuda.is_available() else ["tpu", "cuda"]
    for device, says in zip(devices, ["argument --device: 'tpu' is not auto, cpu, cuda or cuda:N",
                                      "argument --device: 'cuda', but this machine has no CUDA GPU (use --device cpu)"]):
        with pytest.raises(SystemExit) as exit:
            main(["--device", device])
        error = capsys.readouterr().err
        assert exit.value.code == 2 and says in error and len(error.strip().splitlines()) == 1, error


@pytest.mark.parametrize("args", [
    ["train", "--data", "/nonexistent", "--device", "cpu"],
    ["infer", "--checkpoint", "/nonexistent.pth", "--image", "x.jpg"],
    ["weights", "export", "/nonexistent.pth", "--format", "timm", "out.safetensors"],
    ["weights", "convert", "/nonexistent.safetensors", "out.safetensors"],
], ids=["train", "infer", "weights-export", "weights-convert"])
def test_every_cli_ends_a_runtime_failure_with_exit_status_1(args):
    """...and what fails at run time (no such data, checkpoint or file) is exit status 1, one line."""
    result = run_cli(*args)
    assert result.returncode == 1 and result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_large_image_that_fails_while_decoding_is_skipped_and_counted(cifar_dir, tmp_path):
    """A JPEG cut mid-scan passes the header check and fails only while training decodes it:
    with --skip-bad-images the run goes on and says so at the end; without, one line."""
    import io

    root = large_image_folder(cifar_dir, tmp_path / "pets")
    whole = io.BytesIO()
    Image.open(cifar_dir / "test" / "cat" / "0009.jpg").resize((80, 80)).save(whole, format="JPEG")
    (root / "train" / "cat" / "cut.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) * 2 // 3])
    from infer.images import check_image

    assert check_image(root / "train" / "cat" / "cut.jpg") is None  # the header check lets it through
    args = ["train", "--data", str(root), "--epochs", "1", "--output-dir", str(tmp_path / "out"),
            *TINY_TRAIN_ARGS, "--batch-size", "4", "--num-workers", "0"]
    stopped = run_cli(*args)  # (after the progress bar's first lines)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    message = stopped.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "cut.jpg" in message and "--skip-bad-images" in message
    skipped = run_cli(*args, "--skip-bad-images", "--output-dir", str(tmp_path / "skipped"))
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "skipped 1 image(s) that failed while decoding, e.g." in skipped.stdout and "cut.jpg" in skipped.stdout
    assert (tmp_path / "skipped" / "vit_pets_finetuned.pth").is_file()


def test_the_decoded_image_cache_notices_an_image_edited_in_place(cifar_dir, tmp_path):
    """Every file's size and modification time are in the cache key, not every hundredth one's."""
    from train import TrainConfig
    from train.datasets import load_dataset

    data = make_subset(cifar_dir, tmp_path / "data", 30, 1)  # 300 images (copies): the old key checked 3 of them
    edited = data / "train" / "cat" / "0005.jpg"
    cfg = TrainConfig(data=str(data), cache_dir=str(tmp_path / "cache"), num_workers=1)
    before = load_dataset(cfg).train
    Image.new("RGB", (32, 32), (255, 0, 0)).save(edited, format="JPEG", quality=100)
    after = load_dataset(cfg).train
    assert len(after.labels) == len(before.labels)
    changed = (after.images.float() - before.images.float()).abs().flatten(1).amax(1) > 50
    assert changed.sum() == 1  # exactly the edited image was decoded anew
    assert not (cifar_dir / "train" / "cat" / "0005.jpg").samefile(edited)


def test_what_the_readmes_commands_write_in_the_checkout_is_git_ignored():
    """The README's commands write run folders, pictures and exports into the checkout: none of
    it may show up in `git status`."""
    readme = (REPO / "README.md").read_text()
    export = re.search(r"^python -m weights export \S+ --format hf (\S+)$", readme, re.M).group(1)
    written = ["runs/quick/last.pt", export + "model.safetensors", "explained/cat.png", "model.onnx", "figures/a.png"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=REPO, capture_output=True, text=True)
    assert sorted(result.stdout.split()) == sorted(written), result.stdout + result.stderr


def test_the_readmes_model_example_defines_every_name_it_uses():
    """Each name the README's create_model example reads is imported or assigned in it first."""
    import ast
    import builtins

    readme = (REPO / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "forward_features" in block)
    tree = ast.parse(code)
    defined = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names}
    defined |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    assert used - defined - set(dir(builtins)) == set()
