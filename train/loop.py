"""The fine-tuning loop: plain PyTorch, top to bottom.

    data -> model (pretrained, new head) -> AdamW + warmup/cosine -> for each epoch:
        train steps (autocast, clip, step) -> evaluate -> metrics.jsonl -> last.pt
    -> vit_<name>_finetuned.pth, plots

The file reads in that order: the run's objects (`Run`, made by `prepare`), one epoch of
training, one evaluation, the resumable checkpoint (last.pt), and `train`, which strings them
together. Nothing in a training step waits for the GPU: losses and accuracies are summed on the
device and read only every `log_every` steps.
"""

import json
import math
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import vit
from train.batches import make_batches
from train.config import RESUME_MUST_MATCH, TrainConfig
from train.distributed import (StopAgreement, full_state_dict, load_model_state, load_optimizer_state,
                               optimizer_state, rank_and_world, shard)
from train.ema import EMA
from train.lora import add_lora, count_parameters, merged_state_dict, parse_targets
from train.memory import TrainingShape, memory_advice, plan_memory, size
from train.optim import build_optimizer
from train.datasets import Dataset, data_folder, load_dataset
from train.stop import StopRequest
from train.timing import PhaseTimer, timing_line
from vit.checkpoint import BackgroundSaver, CheckpointError, ModelCard, atomic_save, safe_load, save_model
from vit.cli import first_line
from vit.device import AMP_DTYPES, pick_device
from vit.model import DropPath, ViTConfig, make_block

QUICK_START = "--model vit_tiny_patch16_224 --img-size 64 --max-train-samples 3000"


class TrainingError(Exception):
    """A run that cannot go on; the message is one readable line."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; last.pt has been saved."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}, continue with --resume {path}")
        self.signum = signum


# ---------------------------------------------------------------- the run's objects


@dataclass
class EpochProgress:
    """The running sums of the epoch in progress, kept on the device (read every log_every steps).
    Saved in last.pt, so an epoch resumed halfway reports the same totals."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    non_finite: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device) -> "EpochProgress":
        zero = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        return cls(zero(torch.float32), zero(torch.long), zero(torch.int32))

    def to(self, device) -> "EpochProgress":
        return EpochProgress(self.loss_sum.to(device), self.correct.to(device), self.non_finite.to(device), self.seen)


@dataclass
class Run:
    """Everything one fine-tuning run works with; `prepare` makes it."""

    cfg: TrainConfig
    data: Dataset
    model: vit.VisionTransformer
    forward: torch.nn.Module  # the model as trained: wrapped by DDP (FSDP shards the model itself)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: str  # "bf16", "fp16" or "none"
    use_compile: bool
    train_batches: object  # train.batches.TensorBatches or FileBatches
    test_batches: object
    seconds_per_image: float  # the speed forecast made before any data was touched
    rank: int = 0
    world_size: int = 1
    resume_from: dict | None = None  # the last.pt being resumed
    history: list[dict] = field(default_factory=list)  # metrics.jsonl's records so far
    steps_done: int = 0  # in this process
    first_step_seconds: float | None = None  # this process's first step, compilation included
    saver: BackgroundSaver = field(default_factory=BackgroundSaver)  # writes the epochs' last.pt while training goes on
    ema: EMA | None = None  # --ema: the moving average of the weights
    stop_agreement: StopAgreement = field(default_factory=StopAgreement)  # ranks stop after the same step

    def stateful(self) -> dict:
        """What last.pt saves and a resumed run loads back, beside the weights and the optimiser
        (whose state, under FSDP, is gathered and sharded by train/distributed.py): each object's
        state_dict() under its name."""
        things = {"scheduler": self.scheduler, "scaler": self.scaler}
        return {**things, "ema": self.ema} if self.ema else things

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def card(self) -> ModelCard:
        return model_card(self.cfg, self.data, self.model, self.amp)


def model_card(cfg: TrainConfig, data: Dataset, model: vit.VisionTransformer, amp: str) -> ModelCard:
    """What inference needs besides the weights (vit/checkpoint.py), for a model trained (or
    probed) on `data` as `cfg` says."""
    return ModelCard(model_name=cfg.model, img_size=cfg.img_size, class_names=tuple(data.class_names),
                     mean=tuple(model.pretrained_cfg["mean"]), std=tuple(model.pretrained_cfg["std"]),
                     source_size=data.source_size, layer_norm_eps=model.cfg.layer_norm_eps,
                     activation=model.cfg.activation, eval_amp=amp, architecture=model.cfg)


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


def check_output_dir(path: str | os.PathLike) -> None:
    """Fail now, not after hours of training, if `path` cannot be created or written to. Creates
    nothing: a run that fails to start leaves no folder behind."""
    path = Path(path).expanduser()
    existing = existing_ancestor(path)
    if not existing.is_dir():
        raise CheckpointError(f"--output-dir {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"--output-dir {path}: cannot write in {existing} (permission denied)")


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


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Learning-rate multiplier: 0 -> 1 linearly over warmup_steps, then a cosine down to 0."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return multiplier


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


def build_model(cfg: TrainConfig, num_classes: int, pretrained: str, device: torch.device) -> vit.VisionTransformer:
    """The model as it trains: pretrained weights and a new head, adapters (--lora), activation
    checkpointing, on the device (with --fsdp, `shard` puts it there, below)."""
    model = vit.create_model(cfg.model, num_classes=num_classes, img_size=cfg.img_size, pretrained=pretrained,
                             drop_path_rate=cfg.drop_path)
    if cfg.lora:
        add_lora(model, cfg.lora, cfg.lora_alpha, parse_targets(cfg.lora_targets))
    model.grad_checkpointing = cfg.grad_checkpointing
    if not cfg.fsdp:
        model.to(device)  # (fully_shard moves each block's shard there itself)
    return model


def prepare(cfg: TrainConfig, timer: PhaseTimer | None = None) -> Run:
    """Data, model, optimiser, schedule, scaler, (DDP or FSDP, compile) wrapping: the run's objects.
    Everything that can fail in seconds (settings, output folder, checkpoint, weights, download,
    memory) is checked before the data, whose first decoding can take a minute."""
    timer = timer or PhaseTimer()
    device, amp, use_compile = resolve_hardware(cfg)
    rank, world_size = rank_and_world()
    model_cfg = vit.model_config(cfg.model, img_size=cfg.img_size)  # a bad name or size fails here
    check_output_dir(cfg.output_dir)
    check_free_space(cfg.output_dir, model_cfg)
    data_folder(cfg)
    resume_from = safe_load(cfg.resume) if cfg.resume else None
    with timer.phase("weights"):  # on resume they come from last.pt: nothing to fetch
        pretrained = "none" if cfg.resume else vit.locate_pretrained(cfg.model, cfg.pretrained)
    check_memory(model_cfg, TrainingShape.of(cfg, amp, world_size), device, rank == 0)
    seconds_per_image = forecast_seconds_per_image(model_cfg, device, AMP_DTYPES[amp])
    torch.manual_seed(cfg.seed)  # after the forecast's random matrix: runs start from the same state

    with ThreadPoolExecutor(1, thread_name_prefix="data") as background:  # decoding runs in worker processes
        loading = background.submit(load_dataset, cfg)
        if use_compile and not cfg.lora and not cfg.drop_path:  # meanwhile, compile the block here (compile_blocks)
            if rank == 0:
                tqdm.write("compiling the encoder block (torch.compile) while the images decode")
            with timer.phase("compile"):
                compile_ahead(model_cfg, device, AMP_DTYPES[amp], cfg.batch_size)
        with timer.phase("data"):  # what the data took beyond that
            data = loading.result()
    with timer.phase("weights"):
        model = build_model(cfg, len(data.class_names), pretrained, device)
        if resume_from:
            model.pretrained_cfg.update(mean=tuple(resume_from.get("mean", vit.DEFAULT_MEAN)),
                                        std=tuple(resume_from.get("std", vit.DEFAULT_STD)))
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)  # only once data and weights are in hand
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    with timer.phase("data"):  # small images move to the device here
        train_batches = make_batches(data.train, cfg, device, mean, std, train=True, rank=rank, world_size=world_size)
        test_batches = make_batches(data.test, cfg, device, mean, std, train=False)
    if len(train_batches) == 0:
        raise TrainingError(f"{len(data.train.labels)} training images make no full batch of {cfg.batch_size}"
                            f"{f' per rank ({world_size} ranks)' if world_size > 1 else ''}; lower --batch-size")

    ema = EMA(model, cfg.ema) if cfg.ema else None  # before compiling: the average is evaluated eagerly
    if cfg.fsdp:  # the average is sharded like the model
        for module in (model, ema.model) if ema else (model,):
            shard(module, device)
    total_steps = cfg.epochs * len(train_batches)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.layer_decay,
                                fused=device.type == "cuda" and not cfg.fsdp)  # (foreach for FSDP's sharded tensors)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, max(1, int(cfg.warmup_fraction * total_steps))))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if use_compile:  # the graphs compile_ahead made serve every block
        compile_blocks(model)
    forward = model
    if world_size > 1 and not cfg.fsdp:  # DDP: gradients are averaged across ranks during backward
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(cfg=cfg, data=data, model=model, forward=forward, optimizer=optimizer, scheduler=scheduler,
               scaler=scaler, device=device, amp=amp, use_compile=use_compile, train_batches=train_batches,
               test_batches=test_batches, seconds_per_image=seconds_per_image, rank=rank, world_size=world_size,
               resume_from=resume_from, ema=ema, stop_agreement=StopAgreement.for_run())


# ---------------------------------------------------------------- one epoch of training, one evaluation


def train_one_epoch(run: Run, epoch: int, start_step: int, progress: EpochProgress, stop: StopRequest) -> dict:
    """Steps start_step.. of `epoch`, adding to `progress` (the epoch's running sums)."""
    cfg, model, batches, optimizer, scaler = run.cfg, run.model, run.train_batches, run.optimizer, run.scaler
    model.train()
    bar = tqdm(total=len(batches) * cfg.batch_size, initial=start_step * cfg.batch_size, unit="img",
               desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not run.is_main, dynamic_ncols=True, leave=False)
    first_of_run = run.steps_done == 0
    if first_of_run:  # on a CPU a first step can take minutes: show that it runs
        bar.set_postfix_str("first step", refresh=True)
    started = time.perf_counter()
    for step, (images, labels) in enumerate(batches.epoch(epoch, start_step), start=start_step):
        stop.step_started()
        with torch.autocast(images.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            logits = run.forward(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        if run.ema:
            run.ema.update(model)
        stop.step_finished()
        run.steps_done += 1

        # Running sums stay on the device: no host sync here.
        progress.loss_sum += loss.detach().float() * len(labels)
        progress.correct += (logits.argmax(1) == labels).sum()
        progress.seen += len(labels)
        progress.non_finite += (~torch.isfinite(loss.detach())).int()
        bar.update(len(labels))
        last_step = step + 1 == len(batches)
        if (step + 1) % cfg.log_every == 0 or last_step or stop.signum is not None or first_of_run:
            if progress.non_finite.item():  # the one sync, every log_every steps
                raise TrainingError(f"loss became NaN/Inf in epoch {epoch + 1} near step {step + 1}; stopped, "
                                    "last.pt keeps the last good epoch (try a lower --lr or --amp bf16)")
            running_loss = progress.loss_sum.item() / progress.seen
            bar.set_postfix(loss=f"{running_loss:.4f}", acc=f"{progress.correct.item() / progress.seen:.2%}",
                            lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
            run.history.append({"kind": "step", "epoch": epoch, "step": epoch * len(batches) + step + 1,
                                "loss": running_loss})
            if first_of_run:  # the .item() above waited for the GPU: the first step is really done
                run.first_step_seconds, first_of_run = time.perf_counter() - started, False
        if run.stop_agreement.after_step(stop.signum is not None) and not last_step:  # every rank at the same step
            bar.close()
            path = save_last(run, epoch, step + 1, progress)
            raise Interrupted(stop.signum or signal.SIGTERM, path)
    bar.close()
    seconds = time.perf_counter() - started
    return {"train_loss": progress.loss_sum.item() / max(1, progress.seen),
            "train_acc": progress.correct.item() / max(1, progress.seen),
            "train_img_per_s": (len(batches) - start_step) * cfg.batch_size * run.world_size / seconds,
            "train_seconds": seconds}


@torch.no_grad()
def evaluate(model, batches, num_classes: int, amp_dtype, is_main: bool = True, desc: str = "eval") -> dict:
    """Loss, top-1 accuracy and confusion matrix (rows: true class) over a whole split."""
    loss_sum = torch.zeros((), device=batches.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=batches.device)
    count = 0
    for images, labels in tqdm(batches.epoch(0), total=len(batches), desc=desc, leave=False, disable=not is_main):
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        cells = labels * num_classes + logits.argmax(1)  # (true, predicted) pairs as flat indices
        confusion.scatter_add_(0, cells, torch.ones_like(cells))  # unlike bincount, never syncs
        count += len(labels)
    confusion = confusion.view(num_classes, num_classes).cpu()
    return {"test_loss": loss_sum.item() / max(1, count), "test_acc": confusion.trace().item() / max(1, count),
            "test_images": count, "confusion": confusion.tolist()}


def compile_seconds(first_step: float, epoch_seconds: float, steps: int) -> float:
    """What the first step took beyond an ordinary step of the same epoch: its first-call costs,
    and a compilation if compile_ahead's graphs did not fit the model (weights whose file names
    another LayerNorm epsilon or activation than the model's name, as transformers' SigLIP)."""
    if steps < 2:
        return 0.0
    ordinary = (epoch_seconds - first_step) / (steps - 1)
    return max(0.0, first_step - ordinary)


# ---------------------------------------------------------------- last.pt: the resumable state


def save_last(run: Run, epoch: int, step: int, progress: EpochProgress, background: bool = False) -> Path:
    """Everything needed to continue exactly where we are, after `step` steps of `epoch`: the
    fine-tuned checkpoint's fields (vit/checkpoint.py) plus optimiser, schedule, scaler, RNG,
    the epoch's running sums, the history and the settings. background: return once the state
    is copied to the CPU and write it while training goes on (`run.saver.wait()` finishes it)."""
    path = Path(run.cfg.output_dir) / "last.pt"
    weights = full_state_dict(run.model)  # under FSDP every rank takes part in gathering them...
    optimizer = optimizer_state(run.model, run.optimizer)
    stateful = {name: thing.state_dict() for name, thing in run.stateful().items()}
    if not run.is_main:  # ...and rank 0 writes them
        if not background:
            dist.barrier()  # (below)
        return path
    sums = progress.to("cpu")
    state = {
        "state_dict": weights, **run.card().to_dict(), "optimizer": optimizer, **stateful,
        "epoch": epoch, "step": step,
        "progress": {"loss_sum": sums.loss_sum, "correct": sums.correct, "non_finite": sums.non_finite,
                     "seen": sums.seen},
        "history": run.history,
        "rng": torch.get_rng_state(),  # (every rank draws alike: rank 0's serves all)
        **({"cuda_rng": torch.cuda.get_rng_state(run.device)} if run.device.type == "cuda" else {}),  # drop path's
        "config": asdict(run.cfg),
    }
    if background:
        run.saver.save(state, path)
    else:
        run.saver.wait()  # never two writers of one file
        atomic_save(state, path)
        if run.world_size > 1:
            dist.barrier()  # every rank leaves with the file whole: a run resumed next reads all of it
    return path


def restore(run: Run) -> tuple[int, int, EpochProgress]:
    """Load the last.pt that `prepare` read into the run's objects; return (epoch, step, the
    epoch's running sums)."""
    checkpoint, path = run.resume_from, run.cfg.resume
    if "optimizer" not in checkpoint:
        raise CheckpointError(f"{path}: a final model, not a resumable last.pt")
    saved = {**asdict(TrainConfig()), **checkpoint.get("config", {})}  # a setting older runs lacked: its default
    changed = [f"{k}: {saved.get(k)!r} -> {getattr(run.cfg, k)!r}"
               for k in RESUME_MUST_MATCH if saved.get(k) != getattr(run.cfg, k)]
    if changed:
        raise CheckpointError(f"{path}: resume with the settings of the original run; changed: {'; '.join(changed)}")
    try:
        load_model_state(run.model, checkpoint["state_dict"])
        load_optimizer_state(run.model, run.optimizer, checkpoint["optimizer"])
        for name, thing in run.stateful().items():
            thing.load_state_dict(checkpoint[name])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: does not fit this model ({first_line(error)[:200]})") from None
    run.history[:] = checkpoint.get("history", [])
    torch.set_rng_state(checkpoint["rng"])
    if "cuda_rng" in checkpoint and run.device.type == "cuda":
        torch.cuda.set_rng_state(checkpoint["cuda_rng"], run.device)
    progress = EpochProgress(**checkpoint["progress"]).to(run.device)
    return checkpoint["epoch"], checkpoint["step"], progress


# ---------------------------------------------------------------- the run


def announce(run: Run) -> None:
    """The run's first lines: what trains on what, and a warning if it will be slow."""
    cfg, data = run.cfg, run.data
    precision = "fp32" if run.amp == "none" else run.amp
    extras = (", compiled" if run.use_compile else "") + (f", {run.world_size} ranks" if run.world_size > 1 else "")
    extras += ", FSDP" if cfg.fsdp else ""
    extras += ", activation checkpointing" if cfg.grad_checkpointing else ""
    extras += f", EMA {cfg.ema}" if run.ema else ""
    tqdm.write(f"{cfg.model} @ {cfg.img_size}px on {run.device} ({precision}{extras}), {len(data.train.labels)} train / "
               f"{len(data.test.labels)} test images, {len(data.class_names)} classes, "
               f"weights: {run.model.pretrained_cfg['source'] or 'random init'}")
    if cfg.lora:
        trainable, total = count_parameters(run.model)  # (a sharded parameter counts whole)
        tqdm.write(f"LoRA rank {cfg.lora} on {cfg.lora_targets}: training {trainable:,} of {total:,} parameters "
                   f"({trainable / total:.2%}); "
                   "the adapters are merged into the saved model")
    warning = epoch_warning(run.seconds_per_image, len(run.train_batches) * cfg.batch_size)
    if warning:
        tqdm.write(warning)


def evaluate_epoch(run: Run, epoch: int, train_stats: dict) -> dict:
    """The epoch's record: its training figures, the test split's (and the EMA's, as *_ema)."""
    classes = len(run.data.class_names)
    run.model.eval()
    with eager():
        record = {"kind": "epoch", "epoch": epoch + 1, **train_stats,
                  **evaluate(run.model, run.test_batches, classes, run.amp_dtype, run.is_main),
                  "epoch_seconds": train_stats["train_seconds"], "lr": run.scheduler.get_last_lr()[0]}
        if run.ema:
            averaged = evaluate(run.ema.model, run.test_batches, classes, run.amp_dtype, run.is_main, desc="eval EMA")
            record.update({f"{k}_ema": v for k, v in averaged.items() if k != "test_images"})
    return record


def epoch_line(record: dict, epochs: int) -> str:
    """`epoch 2/3: train loss ... acc ... | test loss ... acc ... [| EMA acc ...] | img/s, s`."""
    ema = f" | EMA acc {record['test_acc_ema']:.2%}" if "test_acc_ema" in record else ""
    return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%} | "
            f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}{ema} | "
            f"{record['train_img_per_s']:.0f} img/s, {record['train_seconds']:.1f} s")


FINAL_METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "train_img_per_s")


def plain_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a fine-tuned checkpoint holds: whole (gathered under FSDP: every rank calls
    this, rank 0 gets them), LoRA's adapters merged in: a plain ViT's state_dict."""
    return merged_state_dict(model, full_state_dict(model))


def save_final(run: Run, record: dict, timer: PhaseTimer) -> dict:
    """The end of a run: the fine-tuned model (and the EMA's), the final last.pt, the plots,
    the timing, and what was written (under torchrun every rank gathers, rank 0 writes).
    Returns the final metrics."""
    cfg, data, output_dir = run.cfg, run.data, Path(run.cfg.output_dir)
    final = {k: record.get(k) for k in FINAL_METRICS}
    if not record and cfg.resume:  # resumed a run that had already finished
        final = {k: v for k, v in run.history[-1].items() if k in final} if run.history else {}
    final_path = output_dir / f"vit_{data.name}_finetuned.pth"
    written = [f"{final_path.name} (the fine-tuned model)"]
    with timer.phase("save"):
        weights = plain_weights(run.model)
        ema_weights = plain_weights(run.ema.model) if run.ema else None
    if not run.is_main:
        if record:
            save_last(run, cfg.epochs, 0, EpochProgress.zeros(run.device))  # its gathering, with rank 0's below
        return final
    with timer.phase("save"):
        save_model(final_path, weights, run.card(), metrics=final, confusion=record.get("confusion"),
                   config=asdict(cfg))
        if run.ema:  # the average is a model of its own: infer and export read it like any other
            averaged = {k: record.get(f"{k}_ema", record.get(k)) for k in FINAL_METRICS}
            ema_path = output_dir / f"vit_{data.name}_finetuned_ema.pth"
            save_model(ema_path, ema_weights, run.card(), metrics=averaged, confusion=record.get("confusion_ema"),
                       config=asdict(cfg))
            written.append(f"{ema_path.name} (the EMA of the weights, test accuracy "
                           f"{averaged.get('test_acc') or float('nan'):.2%})")
        if record:  # then the final last.pt: should the disk fill up, the model is safe already
            save_last(run, cfg.epochs, 0, EpochProgress.zeros(run.device))
        from train.plots import save_plots

        save_plots(run.history, record.get("confusion"), data.class_names, output_dir)
    timing = timer.record()
    with open(output_dir / "metrics.jsonl", "a") as file:
        file.write(json.dumps(timing) + "\n")
    tqdm.write(timing_line(timing))
    tqdm.write(f"saved {final_path} (test accuracy {final.get('test_acc') or float('nan'):.2%})\n"
               f"wrote in {output_dir}: {', '.join(written)}, last.pt (to --resume or extend), "
               "metrics.jsonl, curves.png, confusion_matrix.png\n"
               f"next: python -m infer --checkpoint {final_path} --image IMAGE_OR_FOLDER"
               + (f"   (or --data {cfg.data} to evaluate a labelled folder)" if Path(cfg.data).is_dir() else ""))
    return final


def train(cfg: TrainConfig, started: float | None = None) -> dict:
    """Fine-tune as `cfg` says; return the final metrics. Writes into cfg.output_dir:
    metrics.jsonl, last.pt (each epoch), vit_<name>_finetuned.pth (and _ema.pth with --ema),
    curves.png, confusion_matrix.png. started: the time.time() the run's timing counts from
    (python -m train: the process's start)."""
    timer = PhaseTimer(started)
    run = prepare(cfg, timer)
    start_epoch, start_step, progress = 0, 0, EpochProgress.zeros(run.device)
    if cfg.resume:
        start_epoch, start_step, progress = restore(run)
    if run.is_main:
        announce(run)

    stop = StopRequest(first_step_estimate=run.seconds_per_image * cfg.batch_size)
    record = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            with timer.phase("train"):
                train_stats = train_one_epoch(run, epoch, start_step, progress, stop)
            if run.use_compile and epoch == start_epoch and run.first_step_seconds is not None:
                steps = len(run.train_batches) - start_step
                timer.move(compile_seconds(run.first_step_seconds, train_stats["train_seconds"], steps), "train", "compile")
            with timer.phase("eval"):
                record = evaluate_epoch(run, epoch, train_stats)
            summary = {k: v for k, v in record.items() if not k.startswith("confusion")}
            run.history.append(summary)
            if run.is_main:
                with open(Path(cfg.output_dir) / "metrics.jsonl", "a") as file:
                    file.write(json.dumps(summary) + "\n")
                tqdm.write(epoch_line(record, cfg.epochs))
            start_step, progress = 0, EpochProgress.zeros(run.device)
            stopping = run.stop_agreement.settle(stop.signum is not None)  # the same answer on every rank
            if epoch + 1 < cfg.epochs or stopping:  # (the final one: after the model, below)
                with timer.phase("save"):  # the copy to the CPU; the disk write overlaps the next epoch
                    save_last(run, epoch + 1, 0, progress, background=not stopping)
            if stopping:
                raise Interrupted(stop.signum or signal.SIGTERM, Path(cfg.output_dir) / "last.pt")
    finally:
        with timer.phase("save"):  # the last last.pt reaches the disk (also when stopping)
            run.saver.wait()
        run.stop_agreement.close()
        stop.restore()
    return save_final(run, record, timer)
