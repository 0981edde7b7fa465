"""A run's state, and the one owner of what it saves: the objects it works with (`Run`), what
is saved while it trains (last.pt, to resume exactly where it stopped) and at its end (the
fine-tuned model), and what it reports. Every saved tensor passes through here: gathered from
FSDP's shards, LoRA's adapters merged in, the EMA kept beside the weights, written atomically.

    Run               everything one run works with; train/loop.py's `prepare` makes it
    EMA               the moving average of the weights (--ema), saved beside them
    full_state_dict   whole weights, gathered on rank 0 under FSDP; load_model_state shards them back
    save_last         last.pt after each epoch (in the background) or on a stop signal
    restore           a resumed run's objects loaded back from last.pt
    save_final        vit_<name>_finetuned.pth (MAE: vit_<name>_mae.pth), the final last.pt, plots,
                      the closing lines
"""

import copy
import json
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from tqdm import tqdm

import vit
from train.config import RESUME_MUST_MATCH, TrainConfig
from train.datasets import Dataset
from train.distributed import StopAgreement, is_sharded
from train.lora import count_parameters, merged_state_dict
from train.preflight import OutputLock, epoch_warning
from train.timing import PhaseTimer, timing_line
from vit.checkpoint import AMP_DTYPES, CheckpointError, ModelCard, save_model
from vit.cli import first_line
from weights.files import BackgroundSaver, atomic_save


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; last.pt has been saved."""

    def __init__(self, signum: int, path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}, continue with --resume {path}")
        self.signum = signum



# ---------------------------------------------------------------- the weights: gathered, averaged, loaded back

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU only


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole weights: gathered on rank 0's CPU under FSDP (every rank must call it;
    the others get {}), else model.state_dict()."""
    if is_sharded(model):
        return get_model_state_dict(model, options=FULL)
    return model.state_dict()


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """AdamW's state by parameter name, whole (gathered on rank 0 under FSDP; every rank calls it)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL if is_sharded(model) else None)


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole weights (as saved) into a model, sharded or not; strict about keys."""
    if is_sharded(model):
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        model.load_state_dict(state)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load AdamW's state as `optimizer_state` saved it (or, from an older last.pt, by position)."""
    if all(isinstance(p, int) for group in state["param_groups"] for p in group["params"]):
        optimizer.load_state_dict(state)  # the format of torch.optim.Optimizer.state_dict()
        return
    options = StateDictOptions(full_state_dict=True) if is_sharded(model) else None
    set_optimizer_state_dict(model, optimizer, state, options=options)


class EMA:
    """An exponential moving average of the weights (Polyak averaging), as DeiT and many CLIP
    fine-tunes keep one.
    
    After every optimiser step: ema = decay * ema + (1 - decay) * weights. With decay 0.999 the
    average spans about the last 1,000 steps, so it smooths out the noise of the last few batches;
    it is often the better model at the end of a run. It is evaluated beside the raw weights every
    epoch, saved in last.pt (so a resumed run continues the same average) and, at the end, as a
    fine-tuned checkpoint of its own.

    The averaged copy of a model: `update(model)` after each step, `model` to evaluate it."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)  # starts as the weights themselves

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        averaged, current = self.model.state_dict(), model.state_dict()  # same keys, the same order (FSDP: shards)
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        # ema += (1 - decay) * (weights - ema), all tensors in one call (timm's ModelEmaV3 does the same)
        torch._foreach_lerp_([averaged[k] for k in floats], [current[k] for k in floats], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.model)  # under FSDP (the average is sharded like the model): gathered

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        load_model_state(self.model, state_dict)



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
    lock: OutputLock | None = None  # rank 0's lock on the output folder (train/preflight.py), held to the end
    objective: object = None  # what it learns: train/objectives.py's Classification or MaskedAutoencoding

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

    @property
    def encoder(self) -> vit.VisionTransformer:
        """The ViT being trained (MAE's: inside the masked autoencoder)."""
        return self.objective.encoder(self.model)

    def card(self) -> ModelCard:
        return model_card(self.cfg, self.data, self.encoder, self.amp)


def model_card(cfg: TrainConfig, data: Dataset, model: vit.VisionTransformer, amp: str) -> ModelCard:
    """What inference needs besides the weights (vit/checkpoint.py), for a model trained (or
    probed) on `data` as `cfg` says."""
    return ModelCard(model_name=cfg.model, img_size=cfg.img_size, class_names=tuple(data.class_names),
                     mean=tuple(model.pretrained_cfg["mean"]), std=tuple(model.pretrained_cfg["std"]),
                     source_size=data.source_size, layer_norm_eps=model.cfg.layer_norm_eps,
                     activation=model.cfg.activation, eval_amp=amp, architecture=model.cfg)



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



# ---------------------------------------------------------------- what the run reports, and its end


def announce(run: Run) -> None:
    """The run's first lines: what trains on what, and a warning if it will be slow."""
    cfg, data = run.cfg, run.data
    precision = "fp32" if run.amp == "none" else run.amp
    extras = (", compiled" if run.use_compile else "") + (f", {run.world_size} ranks" if run.world_size > 1 else "")
    extras += ", FSDP" if cfg.fsdp else ""
    extras += ", activation checkpointing" if cfg.grad_checkpointing else ""
    extras += f", EMA {cfg.ema}" if run.ema else ""
    tqdm.write(f"{cfg.model} @ {cfg.img_size}px on {run.device} ({precision}{extras}), {len(data.train.labels)} train / "
               f"{len(data.test.labels)} test images, " + (f"{len(data.class_names)} classes, " if run.objective.accuracy else
               f"MAE pretraining ({cfg.mask_ratio:.0%} of the patches hidden, decoder {cfg.decoder}), ") +
               f"weights: {run.encoder.pretrained_cfg['source'] or 'random init'}")
    per_epoch = len(run.train_batches) * cfg.batch_size * run.world_size  # training drops the last partial batch
    if per_epoch < len(data.train.labels):
        tqdm.write(f"each epoch trains on {per_epoch:,} of the {len(data.train.labels):,} training images "
                   f"({len(run.train_batches)} full batches of {cfg.batch_size}{' per rank' if run.world_size > 1 else ''}"
                   f"; the {len(data.train.labels) - per_epoch} left over change with each epoch's order)")
    if cfg.lora:
        trainable, total = count_parameters(run.model)  # (a sharded parameter counts whole)
        tqdm.write(f"LoRA rank {cfg.lora} on {cfg.lora_targets}: training {trainable:,} of {total:,} parameters "
                   f"({trainable / total:.2%}); "
                   "the adapters are merged into the saved model")
    warning = epoch_warning(run.seconds_per_image, len(run.train_batches) * cfg.batch_size)
    if warning:
        tqdm.write(warning)


FINAL_METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "train_img_per_s")


def final_metrics(run: Run, record: dict, names: tuple[str, ...]) -> dict:
    """The run's final figures: the last epoch's record's, or, for a resumed run that had already
    finished (no epoch left to run), its history's last epoch's."""
    if not record and run.cfg.resume:
        return {k: v for k, v in run.history[-1].items() if k in names} if run.history else {}
    return {k: record.get(k) for k in names}


def report_end(run: Run, timer: PhaseTimer) -> None:
    """The last lines of every run (rank 0): the timing, appended to metrics.jsonl and said, and
    the images --skip-bad-images skipped while decoding."""
    timing = timer.record()
    with open(Path(run.cfg.output_dir) / "metrics.jsonl", "a") as file:
        file.write(json.dumps(timing) + "\n")
    tqdm.write(timing_line(timing))
    skipped = {**run.train_batches.skipped, **run.test_batches.skipped}
    if skipped:
        file, reason = next(iter(skipped.items()))
        tqdm.write(f"warning: skipped {len(skipped)} image(s) that failed while decoding, e.g. {file}: {reason} "
                   "(the next readable image took each one's place)")


def plain_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a fine-tuned checkpoint holds: whole (gathered under FSDP: every rank calls
    this, rank 0 gets them), LoRA's adapters merged in: a plain ViT's state_dict."""
    return merged_state_dict(model, full_state_dict(model))


MAE_METRICS = ("epoch", "train_loss", "test_loss", "test_loss_trivial", "train_img_per_s")


def save_pretrained(run: Run, record: dict, timer: PhaseTimer) -> dict:
    """The end of an MAE run: vit_<name>_mae.pth, the whole masked autoencoder (`encoder.` and
    `decoder.` keys: weights/layouts.py's ours_mae) with what rebuilds it (its encoder's name,
    size, recorded architecture and normalisation, the decoder's heads and target), so that
    `train --pretrained` fine-tunes its encoder, `--probe` evaluates it and vit.mae.load (and
    `infer.figures --mae`) reconstructs with it; the final last.pt, the curves, the closing lines."""
    cfg, output_dir = run.cfg, Path(run.cfg.output_dir)
    final = final_metrics(run, record, MAE_METRICS)
    path = output_dir / f"vit_{run.data.name}_mae.pth"
    with timer.phase("save"):
        weights = full_state_dict(run.model)
    if not run.is_main:
        if record:
            save_last(run, cfg.epochs, 0, EpochProgress.zeros(run.device))
        return final
    encoder, decoder = run.encoder, run.model.decoder_cfg
    with timer.phase("save"):
        atomic_save({"state_dict": weights, "model_name": cfg.model, "img_size": cfg.img_size,
                     "architecture": encoder.cfg.to_dict(), "mean": list(encoder.pretrained_cfg["mean"]),
                     "std": list(encoder.pretrained_cfg["std"]), "layer_norm_eps": encoder.cfg.layer_norm_eps,
                     "activation": encoder.cfg.activation,
                     "mae": {"num_attention_heads": encoder.cfg.num_heads, "decoder_num_attention_heads": decoder.heads,
                             "norm_pix_loss": decoder.norm_pix_loss},
                     "metrics": final, "config": asdict(cfg)}, path)
        if record:
            save_last(run, cfg.epochs, 0, EpochProgress.zeros(run.device))
        from train.plots import save_plots

        save_plots(run.history, None, [], output_dir)
    report_end(run, timer)
    size = f"--model {cfg.model} --img-size {cfg.img_size}"
    tqdm.write(f"saved {path} (held-out masked-patch loss {final.get('test_loss') or float('nan'):.4f}, predicting "
               f"zero {final.get('test_loss_trivial') or float('nan'):.4f})\n"
               f"wrote in {output_dir}: {path.name} (the encoder and its decoder), last.pt (to --resume or extend), "
               "metrics.jsonl, curves.png, reconstructions/\n"
               f"next: python -m train --pretrained {path} {size} --data LABELLED_FOLDER   (fine-tune the encoder)\n"
               f"      python -m train --probe knn --pretrained {path} {size} --data LABELLED_FOLDER\n"
               f"      python -m infer.figures --mae {path} --images IMAGES OUT_DIR   (reconstructions)")
    return final


def save_final(run: Run, record: dict, timer: PhaseTimer) -> dict:
    """The end of a run: the fine-tuned model (and the EMA's), the final last.pt, the plots,
    the timing, and what was written (under torchrun every rank gathers, rank 0 writes).
    Returns the final metrics. An MAE run ends in save_pretrained instead."""
    if not run.objective.accuracy:
        return save_pretrained(run, record, timer)
    cfg, data, output_dir = run.cfg, run.data, Path(run.cfg.output_dir)
    final = final_metrics(run, record, FINAL_METRICS)
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
    report_end(run, timer)
    tqdm.write(f"saved {final_path} (test accuracy {final.get('test_acc') or float('nan'):.2%})\n"
               f"wrote in {output_dir}: {', '.join(written)}, last.pt (to --resume or extend), "
               "metrics.jsonl, curves.png, confusion_matrix.png\n"
               f"next: python -m infer --checkpoint {final_path} --image IMAGE_OR_FOLDER"
               + (f"   (or --data {cfg.data} to evaluate a labelled folder)" if Path(cfg.data).is_dir() else ""))
    return final

