"""The fine-tuning loop: plain PyTorch, top to bottom.

    data -> model (pretrained, new head) -> AdamW + warmup/cosine -> for each epoch:
        train steps (autocast, clip, step) -> evaluate -> metrics.jsonl -> last.pt
    -> vit_<name>_finetuned.pth, plots

Nothing in a training step waits for the GPU: losses and accuracies are summed on the device
and read only every `log_every` steps.
"""

import json
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import vit
from train.checkpoint import CheckpointError, atomic_save, check_output_dir, safe_load
from train.config import TrainConfig
from train.data import load_dataset, make_batches
from train.stop import StopRequest
from vit.cli import first_line
from vit.device import AMP_DTYPES, pick_device

# Fields that must not change between a run and its resumption.
RESUME_MUST_MATCH = ("data", "model", "img_size", "epochs", "batch_size", "lr", "weight_decay", "warmup_fraction",
                     "label_smoothing", "grad_clip", "crop_padding", "seed", "max_train_samples", "amp")


class TrainingError(Exception):
    """A run that cannot go on; the message is one readable line."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; last.pt has been saved."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}, continue with --resume {path}")
        self.signum = signum


# ---------------------------------------------------------------- setup


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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on the matrices only: not on norms, biases, CLS token, positions."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        no_wd = param.ndim <= 1 or name in ("cls_token", "position_embedding")
        (no_decay if no_wd else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Learning-rate multiplier: 0 -> 1 linearly over warmup_steps, then a cosine down to 0."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return multiplier


QUICK_START = "--model vit_tiny_patch16_224 --img-size 64 --max-train-samples 5000"


def forecast_seconds_per_image(model_cfg, device: torch.device, amp_dtype) -> float:
    """A rough forecast of one training image's time, made in a fraction of a second before any
    data is touched: the image's training arithmetic (forward + backward = 3 x the forward's
    2 x multiply-accumulates) at half the rate that a 1024 x 1024 matmul reaches here (a ViT
    step is mostly such matmuls; the rest, and smaller shapes, are slower). Measured on a 2-core
    CPU it lands within a factor of two of the real rate."""
    dtype = amp_dtype or torch.float32
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
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


# ---------------------------------------------------------------- one epoch of training, one evaluation


def train_one_epoch(state: dict, batches, epoch: int, start_step: int, progress: dict, stop: StopRequest) -> dict:
    """Steps start_step.. of `epoch`. `progress` holds the epoch's running sums (on the device),
    so an epoch resumed halfway reports the same totals."""
    cfg, model, forward = state["cfg"], state["model"], state["forward"]
    optimizer, scheduler, scaler, amp_dtype = state["optimizer"], state["scheduler"], state["scaler"], state["amp_dtype"]
    model.train()
    bar = tqdm(total=len(batches) * cfg.batch_size, initial=start_step * cfg.batch_size, unit="img",
               desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not state["is_main"], dynamic_ncols=True, leave=False)
    first_of_run = not state["steps_done"]
    if first_of_run:  # on a CPU, or while compiling, a first step can take minutes: show that it runs
        bar.set_postfix_str("first step" + (", compiling" if state["use_compile"] else ""), refresh=True)
    started = time.perf_counter()
    for step, (images, labels) in enumerate(batches.epoch(epoch, start_step), start=start_step):
        stop.step_started()
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        stop.step_finished()
        state["steps_done"] += 1

        # Running sums stay on the device: no host sync here.
        progress["loss_sum"] += loss.detach().float() * len(labels)
        progress["correct"] += (logits.argmax(1) == labels).sum()
        progress["seen"] += len(labels)
        progress["non_finite"] += (~torch.isfinite(loss.detach())).int()
        bar.update(len(labels))
        last_step = step + 1 == len(batches)
        if (step + 1) % cfg.log_every == 0 or last_step or stop.signum is not None or first_of_run:
            first_of_run = False
            if progress["non_finite"].item():  # the one sync, every log_every steps
                raise TrainingError(f"loss became NaN/Inf in epoch {epoch + 1} near step {step + 1}; stopped, "
                                    "last.pt keeps the last good epoch (try a lower --lr or --amp bf16)")
            running_loss = progress["loss_sum"].item() / progress["seen"]
            bar.set_postfix(loss=f"{running_loss:.4f}", acc=f"{progress['correct'].item() / progress['seen']:.2%}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
            state["history"].append({"kind": "step", "epoch": epoch, "step": epoch * len(batches) + step + 1,
                                     "loss": running_loss})
        if stop.signum is not None and not last_step:
            bar.close()
            path = save_last(state, epoch, step + 1, progress)
            raise Interrupted(stop.signum, path)
    bar.close()
    seconds = time.perf_counter() - started
    return {"train_loss": progress["loss_sum"].item() / max(1, progress["seen"]),
            "train_acc": progress["correct"].item() / max(1, progress["seen"]),
            "train_img_per_s": (len(batches) - start_step) * cfg.batch_size * state["world_size"] / seconds,
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


# ---------------------------------------------------------------- checkpoints


def save_last(state: dict, epoch: int, step: int, progress: dict) -> Path:
    """Everything needed to continue exactly where we are: after `step` steps of `epoch`."""
    path = Path(state["cfg"].output_dir) / "last.pt"
    if not state["is_main"]:
        return path
    atomic_save({
        "state_dict": state["model"].state_dict(),
        "optimizer": state["optimizer"].state_dict(),
        "scheduler": state["scheduler"].state_dict(),
        "scaler": state["scaler"].state_dict(),
        "epoch": epoch, "step": step,
        "progress": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in progress.items()},
        "history": state["history"],
        "rng": torch.get_rng_state(),
        "config": asdict(state["cfg"]),
        **model_card(state),
    }, path)
    return path


def model_card(state: dict) -> dict:
    """What inference needs besides the weights."""
    model = state["model"]
    return {"model_name": state["cfg"].model, "img_size": state["cfg"].img_size,
            "num_classes": model.cfg.num_classes, "class_names": state["class_names"],
            "mean": list(model.pretrained_cfg["mean"]), "std": list(model.pretrained_cfg["std"]),
            "source_size": state["source_size"], "layer_norm_eps": model.cfg.layer_norm_eps,
            "eval_amp": state["amp"]}


def restore(state: dict) -> tuple[int, int, dict]:
    """Load the last.pt that `prepare` read into the run's objects; return (epoch, step, epoch
    progress sums)."""
    checkpoint, path = state["resume_from"], state["cfg"].resume
    if "optimizer" not in checkpoint:
        raise CheckpointError(f"{path}: a final model, not a resumable last.pt")
    saved = checkpoint.get("config", {})
    changed = [f"{k}: {saved.get(k)!r} -> {getattr(state['cfg'], k)!r}"
               for k in RESUME_MUST_MATCH if saved.get(k) != getattr(state["cfg"], k)]
    if changed:
        raise CheckpointError(f"{path}: resume with the settings of the original run; changed: {'; '.join(changed)}")
    try:
        state["model"].load_state_dict(checkpoint["state_dict"])
        state["optimizer"].load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: does not fit this model ({first_line(error)[:200]})") from None
    state["scheduler"].load_state_dict(checkpoint["scheduler"])
    state["scaler"].load_state_dict(checkpoint["scaler"])
    state["history"][:] = checkpoint.get("history", [])
    torch.set_rng_state(checkpoint["rng"])
    device = state["device"]
    progress = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in checkpoint["progress"].items()}
    return checkpoint["epoch"], checkpoint["step"], progress


def new_progress(device) -> dict:
    zero = lambda dtype: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
    return {"loss_sum": zero(torch.float32), "correct": zero(torch.long), "non_finite": zero(torch.int32), "seen": 0}


# ---------------------------------------------------------------- the run


def prepare(cfg: TrainConfig) -> dict:
    """Data, model, optimiser, schedule, scaler, (DDP and compile) wrapping: the run's state.
    Everything that can fail in seconds (settings, output folder, checkpoint, weights, download)
    is checked before the data, whose first decoding can take a minute."""
    device, amp, use_compile = resolve_hardware(cfg)
    amp_dtype = AMP_DTYPES[amp]
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    model_cfg = vit.model_config(cfg.model, img_size=cfg.img_size)  # a bad name or size fails here
    check_output_dir(cfg.output_dir)
    resume_from = safe_load(cfg.resume) if cfg.resume else None
    # On resume the weights come from last.pt: no need to fetch the pretrained ones again.
    pretrained = "none" if cfg.resume else vit.locate_pretrained(cfg.model, cfg.pretrained)
    seconds_per_image = forecast_seconds_per_image(model_cfg, device, amp_dtype)
    torch.manual_seed(cfg.seed)  # after the forecast's random matrix: runs start from the same state

    data = load_dataset(cfg)
    model = vit.create_model(cfg.model, num_classes=len(data.class_names), img_size=cfg.img_size, pretrained=pretrained)
    if resume_from:
        model.pretrained_cfg.update(mean=tuple(resume_from.get("mean", (0.5,) * 3)),
                                    std=tuple(resume_from.get("std", (0.5,) * 3)))
    model.to(device)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)  # only once data and weights are in hand
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    train_batches = make_batches(data.train, cfg, device, mean, std, train=True, rank=rank, world_size=world_size)
    test_batches = make_batches(data.test, cfg, device, mean, std, train=False)
    if len(train_batches) == 0:
        raise TrainingError(f"{len(data.train.labels)} training images make no full batch of {cfg.batch_size}"
                            f"{f' per rank ({world_size} ranks)' if world_size > 1 else ''}; lower --batch-size")

    total_steps = cfg.epochs * len(train_batches)
    optimizer = build_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, max(1, int(cfg.warmup_fraction * total_steps))))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    forward = model
    if world_size > 1:  # gradients are averaged across ranks during backward
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if use_compile:
        forward = torch.compile(forward)
    return dict(cfg=cfg, data=data, model=model, forward=forward, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, amp=amp, amp_dtype=amp_dtype, device=device, use_compile=use_compile,
                train_batches=train_batches, test_batches=test_batches, class_names=data.class_names,
                source_size=data.source_size, history=[], is_main=rank == 0, world_size=world_size,
                resume_from=resume_from, seconds_per_image=seconds_per_image, steps_done=0)


def train(cfg: TrainConfig) -> dict:
    """Fine-tune as `cfg` says; return the final metrics. Writes into cfg.output_dir:
    metrics.jsonl, last.pt (each epoch), vit_<name>_finetuned.pth, curves.png, confusion_matrix.png."""
    state = prepare(cfg)
    data, model, scheduler = state["data"], state["model"], state["scheduler"]
    device, amp_dtype, is_main = state["device"], state["amp_dtype"], state["is_main"]
    train_batches, test_batches = state["train_batches"], state["test_batches"]
    output_dir = Path(cfg.output_dir)

    start_epoch, start_step, progress = 0, 0, new_progress(device)
    if cfg.resume:
        start_epoch, start_step, progress = restore(state)
    say = tqdm.write if is_main else (lambda *_: None)
    precision = "fp32" if state["amp"] == "none" else state["amp"]
    extras = (", compiled" if state["use_compile"] else "") + (
        f", {state['world_size']} ranks" if state["world_size"] > 1 else "")
    say(f"{cfg.model} @ {cfg.img_size}px on {device} ({precision}{extras}), {len(data.train.labels)} train / "
        f"{len(data.test.labels)} test images, {len(data.class_names)} classes, "
        f"weights: {model.pretrained_cfg['source'] or 'random init'}")
    warning = epoch_warning(state["seconds_per_image"], len(train_batches) * cfg.batch_size)
    if warning:
        say(warning)

    stop = StopRequest(first_step_estimate=state["seconds_per_image"] * cfg.batch_size)
    metrics_file = output_dir / "metrics.jsonl"
    record = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_stats = train_one_epoch(state, train_batches, epoch, start_step, progress, stop)
            model.eval()
            # Eager, not `forward`: under no_grad a compiled model would compile a second graph
            # (tens of seconds), while eager bf16 evaluation of 10k images takes seconds.
            eval_stats = evaluate(model, test_batches, len(data.class_names), amp_dtype, is_main)
            record = {"kind": "epoch", "epoch": epoch + 1, **train_stats, **eval_stats,
                      "epoch_seconds": train_stats["train_seconds"], "lr": scheduler.get_last_lr()[0]}
            if is_main:
                with open(metrics_file, "a") as file:
                    file.write(json.dumps({k: v for k, v in record.items() if k != "confusion"}) + "\n")
            state["history"].append({k: v for k, v in record.items() if k != "confusion"})
            say(f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%} | "
                f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%} | "
                f"{record['train_img_per_s']:.0f} img/s, {record['train_seconds']:.1f} s")
            start_step, progress = 0, new_progress(device)
            save_last(state, epoch + 1, 0, progress)
            if stop.signum is not None:
                raise Interrupted(stop.signum, output_dir / "last.pt")
    finally:
        stop.restore()

    final = {k: record.get(k) for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "train_img_per_s")}
    if not record and cfg.resume:  # resumed a run that had already finished
        final = {k: v for k, v in state["history"][-1].items() if k in final} if state["history"] else {}
    if is_main:
        final_path = output_dir / f"vit_{data.name}_finetuned.pth"
        atomic_save({"state_dict": model.state_dict(), **model_card(state), "metrics": final,
                     "confusion": record.get("confusion"), "config": asdict(cfg)}, final_path)
        from train.plots import save_plots

        save_plots(state["history"], record.get("confusion"), data.class_names, output_dir)
        say(f"saved {final_path} (test accuracy {final.get('test_acc', float('nan')):.2%})\n"
            f"wrote in {output_dir}: {final_path.name} (the fine-tuned model), last.pt (to --resume or extend), "
            "metrics.jsonl, curves.png, confusion_matrix.png\n"
            f"next: python -m infer --checkpoint {final_path} --image IMAGE_OR_FOLDER"
            + (f"   (or --data {cfg.data} to evaluate a labelled folder)" if Path(cfg.data).is_dir() else ""))
    return final
