"""The checks a run makes before any data is decoded, each failing in seconds with one line:
the device and precision, the output folder and its free space, the memory plan, a forecast of
the speed, and compiling the encoder block ahead (while the images decode).

train/loop.py's `prepare` calls them in that order; the first decoding of the data can take a
minute, so everything that can fail sooner does.
"""

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import vit
from train.config import TrainConfig
from train.memory import TrainingShape, memory_advice, plan_memory, size
from vit.checkpoint import CheckpointError
from vit.checkpoint import AMP_DTYPES
from vit.cli import pick_device
from vit.config import ViTConfig
from vit.layers.blocks import make_block
from vit.layers.common import DropPath

QUICK_START = "--model vit_tiny_patch16_224 --img-size 64 --max-train-samples 3000"


class TrainingError(Exception):
    """A run that cannot go on; the message is one readable line."""



# ---------------------------------------------------------------- the machine, the output folder, the memory


def resolve_hardware(cfg: TrainConfig) -> tuple[torch.device, str, bool]:
    """(device, --amp name, whether to torch.compile), defaults filled in."""
    try:
        device = pick_device(cfg.device)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    if dist.is_initialized() and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    amp = cfg.amp or ("bf16" if device.type == "cuda" else "none")
    if amp not in AMP_DTYPES:
        raise TrainingError(f"--amp {amp}: choose bf16, fp16 or none")
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    return device, amp, use_compile


def existing_ancestor(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists: where a not-yet-made output folder will be."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | os.PathLike, data: str | None = None) -> None:
    """Fail now, not after hours of training, if `path` cannot be created or written to, lies
    inside the --data folder (the next run would train on its plots), or is in use by another run
    (`OutputLock`). Creates nothing: a run that fails to start leaves no folder behind."""
    path = Path(path).expanduser()
    if data is not None and Path(data).expanduser().is_dir():
        folder = Path(data).expanduser().resolve()
        if path.resolve() == folder or folder in path.resolve().parents:
            raise CheckpointError(f"--output-dir {path} is inside --data {data}: the next run would read its plots "
                                  "as training images; choose a folder outside the data")
    OutputLock.check(path)
    existing = existing_ancestor(path)
    if not existing.is_dir():
        raise CheckpointError(f"--output-dir {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"--output-dir {path}: cannot write in {existing} (permission denied)")


class OutputLock:
    """One run at a time in an --output-dir: the folder's `.train.lock` file, locked with flock by
    the run that writes there (its pid inside, for the message), for as long as it runs. The
    kernel releases the lock when that process ends, however it ends: a lock left by a killed
    run is stale, and the next run (a --resume, say) takes it over."""

    NAME = ".train.lock"

    def __init__(self, folder: Path):
        """Lock `folder` (which exists now) for this process, or CheckpointError naming the holder."""
        self.file = open(folder / self.NAME, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.file.seek(0) or self.file.read().strip()
            self.file.close()
            raise CheckpointError(f"--output-dir {folder} is in use by another run (pid {holder or '?'}); wait for it "
                                  "to finish, or choose another --output-dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    @classmethod
    def check(cls, folder: Path) -> None:
        """Before any data is read: CheckpointError if a running process holds `folder`'s lock."""
        if (folder / cls.NAME).is_file():
            cls(folder).release()

    def release(self) -> None:
        self.file.close()  # (the file stays: an unlocked one is a stale one)


def bytes_to_write(model_cfg: ViTConfig) -> tuple[int, int]:
    """(the fine-tuned model, last.pt) in bytes, about: fp32 weights, and weights plus AdamW's two
    moments. Counted on the meta device: nothing is allocated."""
    with torch.device("meta"):
        parameters = sum(p.numel() for p in vit.VisionTransformer(model_cfg).parameters())
    return 4 * parameters, 12 * parameters


def check_free_space(path: str | os.PathLike, model_cfg: ViTConfig) -> None:
    """Fail before any data is decoded if the output folder's disk cannot hold what the run
    writes: the fine-tuned model, and last.pt twice (the previous one stays until its successor
    is whole)."""
    path = existing_ancestor(Path(path).expanduser())
    model, last = bytes_to_write(model_cfg)
    needed, free = model + 2 * last, shutil.disk_usage(path).free
    if free < needed:
        mb = 1024 * 1024
        raise CheckpointError(f"--output-dir: the run writes about {needed / mb:.0f} MB (the fine-tuned model "
                              f"{model / mb:.0f} MB, last.pt {last / mb:.0f} MB and its next copy), but {path} has "
                              f"{free / mb:.0f} MB free; free some space or choose another --output-dir")


def forecast_seconds_per_image(model_cfg, device: torch.device, amp_dtype) -> float:
    """A rough forecast of one training image's time, made in a fraction of a second before any
    data is touched: the image's training arithmetic (forward + backward = 3 x the forward's
    2 x multiply-accumulates) at half the rate that a 1024 x 1024 matmul reaches here (a ViT
    step is mostly such matmuls; the rest, and smaller shapes, are slower). Measured on a 2-core
    CPU it lands within a factor of two of the real rate."""
    a = torch.randn(1024, 1024, device=device, dtype=amp_dtype or torch.float32)
    (a @ a).sum().item()  # warm-up: first-call costs (threads, cuBLAS handles)
    start = time.perf_counter()
    for _ in range(3):
        a = a @ a / 32
    a.sum().item()
    flops_per_second = 3 * 2 * 1024**3 / (time.perf_counter() - start)
    return 3 * 2 * model_cfg.forward_macs / (0.5 * flops_per_second)


def epoch_warning(seconds_per_image: float, images: int) -> str | None:
    """One line when an epoch would take more than an hour, with the way to a quick first run."""
    hours = seconds_per_image * images / 3600
    if hours <= 1:
        return None
    return (f"warning: at about {1 / seconds_per_image:.1f} img/s here, one epoch of {images:,} images will take "
            f"about {hours:.1f} h; for a first run of about a minute: {QUICK_START}")


def check_memory(model_cfg: ViTConfig, shape: TrainingShape, device: torch.device, is_main: bool) -> None:
    """Print the memory plan; fail, before any data is decoded, if it will not fit the device."""
    plan = plan_memory(model_cfg, shape, device)
    where = "GPU" if device.type == "cuda" else "CPU process"
    if is_main:
        tqdm.write(plan.line(where))
    if not plan.fits:
        raise TrainingError(f"the memory plan needs about {size(plan.total)} per {where}, {size(plan.free)} is free; "
                            f"{memory_advice(model_cfg, shape, device, plan.free)} (plans come within "
                            "about 25% of measured peaks: benchmarks/README.md)")



# ---------------------------------------------------------------- compiling


def compile_blocks(model: vit.VisionTransformer) -> None:
    """Regional compilation: torch.compile each encoder block, in place, instead of the whole
    model. The blocks share one forward, so Dynamo traces it and Inductor compiles it once for
    all of them: on an H200 the first ViT-B/16 step took 7 s instead of 21 s, at the same steady
    speed (benchmarks/README.md). In place (Module.compile), so the state_dict keys stay ours.

    Not with drop path: each block has its own rate, a constant of its graph, so Dynamo would
    compile the forward once per block, and past its recompile limit (8) run the rest eagerly.
    Then the whole model is compiled as one graph instead, as timm's users do."""
    if any(isinstance(m, DropPath) for m in model.modules()):
        model.compile()
        return
    for block in model.blocks:
        block.compile()


def compile_ahead(model_cfg: ViTConfig, device: torch.device, amp_dtype, batch_size: int) -> None:
    """Compile the encoder block's training graphs (forward and backward) before the model and
    the data exist, so that compilation overlaps decoding the images (`prepare`). It runs one
    step of a throwaway block on tokens of the training batch's shape: Dynamo caches the graphs
    by the block's code and guards on what they depend on (shapes, dtypes, device, autocast,
    training mode), not on which block, so the model's blocks, compiled in place later by
    `compile_blocks`, find them ready and compile nothing (tested). Leaves the random state as
    it was, so a run's initial weights and data order do not depend on it."""
    with torch.random.fork_rng(devices=[]):  # the block's initialisation draws from the CPU generator
        block = make_block(model_cfg, 0).to(device)
    block.compile()
    tokens = torch.zeros(batch_size, model_cfg.num_tokens, model_cfg.embed_dim, device=device,
                         requires_grad=True)  # (B, T, D), float32 as the model's embeddings
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = block(tokens)
    out.sum().backward()  # outside autocast, as the loop's backward


@contextmanager
def eager():
    """Run compiled modules eagerly inside: evaluation under no_grad would otherwise compile a
    second, inference-only graph of the block, while eager evaluation takes seconds."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # PyTorch >= 2.6
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield

