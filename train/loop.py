"""The training loop: plain PyTorch, top to bottom.

    data -> model (pretrained, new head) -> AdamW + warmup/cosine -> for each epoch:
        train steps (autocast, clip, step) -> evaluate -> metrics.jsonl -> last.pt
    -> vit_<name>_finetuned.pth, plots

What the steps learn is the run's objective (train/objectives.py): fine-tuning on the labels by
default, MAE pretraining with --objective mae (its model the masked autoencoder, its file
vit_<name>_mae.pth); the loop is the same for both.

The file reads in that order: `prepare` assembles the run (after train/preflight.py's checks),
one epoch of training, one evaluation, and `train`, which strings them together; what is saved,
restored and reported is train/state.py. Nothing in a training step waits for the GPU: losses
and accuracies are summed on the device and read only every `log_every` steps.
"""

import json
import math
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

import vit
from train.batches import make_batches
from train.config import TrainConfig
from train.datasets import data_folder, load_dataset
from train.distributed import StopAgreement, rank_and_world, shard
from train.memory import TrainingShape
from train.objectives import OBJECTIVES
from train.optim import build_optimizer
from train.preflight import (OutputLock, TrainingError, check_free_space, check_memory, check_output_dir,
                             compile_ahead, compile_blocks, eager, forecast_seconds_per_image, resolve_hardware)
from train.state import EMA, EpochProgress, Interrupted, Run, announce, restore, save_final, save_last
from train.stop import StopRequest
from train.timing import PhaseTimer
from vit.checkpoint import safe_load
from vit.checkpoint import AMP_DTYPES


# ---------------------------------------------------------------- assembling the run


def warmup_cosine(total_steps: int, warmup_steps: int):
    """Learning-rate multiplier: 0 -> 1 linearly over warmup_steps, then a cosine down to 0."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return multiplier


def build_model(cfg: TrainConfig, num_classes: int, pretrained: str, device: torch.device) -> torch.nn.Module:
    """The model as it trains: the objective's (pretrained weights and a new head, adapters with
    --lora; or the masked autoencoder around them), activation checkpointing, on the device (with
    --fsdp, `shard` puts it there, below)."""
    objective = OBJECTIVES[cfg.objective]
    model = objective.build(cfg, num_classes, pretrained)
    objective.encoder(model).grad_checkpointing = cfg.grad_checkpointing
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
    model_cfg = vit.model_config(cfg.model, img_size=cfg.img_size, **cfg.architecture_overrides())  # a bad one fails here
    check_output_dir(cfg.output_dir, cfg.data)
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
        # meanwhile, compile the block here (compile_blocks); MAE's encoder sees a quarter of the tokens
        if use_compile and not cfg.lora and not cfg.drop_path and cfg.objective == "classify":
            if rank == 0:
                tqdm.write("compiling the encoder block (torch.compile) while the images decode")
            with timer.phase("compile"):
                compile_ahead(model_cfg, device, AMP_DTYPES[amp], cfg.batch_size)
        with timer.phase("data"):  # what the data took beyond that
            data = loading.result()
    with timer.phase("weights"):
        model = build_model(cfg, len(data.class_names), pretrained, device)
        encoder = OBJECTIVES[cfg.objective].encoder(model)
        if resume_from:
            encoder.pretrained_cfg.update(mean=tuple(resume_from.get("mean", vit.DEFAULT_MEAN)),
                                        std=tuple(resume_from.get("std", vit.DEFAULT_STD)))
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)  # only once data and weights are in hand
    mean, std = encoder.pretrained_cfg["mean"], encoder.pretrained_cfg["std"]
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
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.layer_decay, OBJECTIVES[cfg.objective].betas,
                                fused=device.type == "cuda" and not cfg.fsdp)  # (foreach for FSDP's sharded tensors)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, max(1, int(cfg.warmup_fraction * total_steps))))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if use_compile:  # the graphs compile_ahead made serve every block
        compile_blocks(model)
    lock = OutputLock(Path(cfg.output_dir)) if rank == 0 else None  # one run at a time writes there, to its end
    forward = model
    if world_size > 1 and not cfg.fsdp:  # DDP: gradients are averaged across ranks during backward
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(cfg=cfg, data=data, model=model, forward=forward, optimizer=optimizer, scheduler=scheduler,
               scaler=scaler, device=device, amp=amp, use_compile=use_compile, train_batches=train_batches,
               test_batches=test_batches, seconds_per_image=seconds_per_image, rank=rank, world_size=world_size,
               resume_from=resume_from, ema=ema, stop_agreement=StopAgreement.for_run(), lock=lock,
               objective=OBJECTIVES[cfg.objective])



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
    # The bar's figures are read every log_every steps, and at least at an epoch's middle and end:
    # an epoch shorter than log_every (the quick start's 23 steps) still shows how it goes.
    log_every = min(cfg.log_every, max(1, len(batches) // 2))
    started = time.perf_counter()
    try:  # an error leaves the epoch with the bar cleared: its one line stands alone
        for step, (images, labels) in enumerate(batches.epoch(epoch, start_step), start=start_step):
            stop.step_started()
            with torch.autocast(images.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                loss, correct = run.objective.step(run.forward, images, labels, cfg)
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
            progress.correct += correct
            progress.seen += len(labels)
            progress.non_finite += (~torch.isfinite(loss.detach())).int()
            bar.update(len(labels))
            last_step = step + 1 == len(batches)
            if (step + 1) % log_every == 0 or last_step or stop.signum is not None or first_of_run:
                if progress.non_finite.item():  # the one sync, every log_every steps
                    raise TrainingError(f"loss became NaN/Inf in epoch {epoch + 1} near step {step + 1}; stopped, "
                                        "last.pt keeps the last good epoch (try a lower --lr or --amp bf16)")
                running_loss = progress.loss_sum.item() / progress.seen
                accuracy = {"acc": f"{progress.correct.item() / progress.seen:.2%}"} if run.objective.accuracy else {}
                bar.set_postfix(loss=f"{running_loss:.4f}", **accuracy, lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
                run.history.append({"kind": "step", "epoch": epoch, "step": epoch * len(batches) + step + 1,
                                    "loss": running_loss})
                if first_of_run:  # the .item() above waited for the GPU: the first step is really done
                    run.first_step_seconds, first_of_run = time.perf_counter() - started, False
            if run.stop_agreement.after_step(stop.signum is not None) and not last_step:  # every rank at the same step
                bar.close()
                path = save_last(run, epoch, step + 1, progress)
                raise Interrupted(stop.signum or signal.SIGTERM, path)
    except BaseException:
        bar.close()
        raise
    bar.close()
    seconds = time.perf_counter() - started
    accuracy = {"train_acc": progress.correct.item() / max(1, progress.seen)} if run.objective.accuracy else {}
    return {"train_loss": progress.loss_sum.item() / max(1, progress.seen), **accuracy,
            "train_img_per_s": (len(batches) - start_step) * cfg.batch_size * run.world_size / seconds,
            "train_seconds": seconds}


def compile_seconds(first_step: float, epoch_seconds: float, steps: int) -> float:
    """What the first step took beyond an ordinary step of the same epoch: its first-call costs,
    and a compilation if compile_ahead's graphs did not fit the model (weights whose file names
    another LayerNorm epsilon or activation than the model's name, as transformers' SigLIP)."""
    if steps < 2:
        return 0.0
    ordinary = (epoch_seconds - first_step) / (steps - 1)
    return max(0.0, first_step - ordinary)


def evaluate_epoch(run: Run, epoch: int, train_stats: dict) -> dict:
    """The epoch's record: its training figures, the objective's evaluation of the test split
    (and of the EMA, as *_ema)."""
    run.model.eval()
    with eager():
        return {"kind": "epoch", "epoch": epoch + 1, **train_stats, **run.objective.evaluate(run, epoch),
                "epoch_seconds": train_stats["train_seconds"], "lr": run.scheduler.get_last_lr()[0]}



# ---------------------------------------------------------------- the run


def train(cfg: TrainConfig, started: float | None = None) -> dict:
    """Fine-tune as `cfg` says; return the final metrics. Writes into cfg.output_dir:
    metrics.jsonl, last.pt (each epoch), vit_<name>_finetuned.pth (and _ema.pth with --ema),
    curves.png, confusion_matrix.png. started: the time.time() the run's timing counts from
    (python -m train: the process's start)."""
    timer = PhaseTimer(started)
    run = prepare(cfg, timer)
    try:
        return run_epochs(run, timer)
    finally:
        if run.lock:
            run.lock.release()


def run_epochs(run: Run, timer: PhaseTimer) -> dict:
    """`train` once the run is prepared: the epochs from where it starts, then the final save."""
    cfg = run.cfg
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
                tqdm.write(run.objective.line(record, cfg.epochs))
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

