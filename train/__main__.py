"""`python -m train`: fine-tune a ViT (by default timm's ViT-B/16 on CIFAR-10, 3 epochs).

Every flag maps to a field of train.config.TrainConfig. Expected failures (bad data, impossible
downloads, bad checkpoints, out of memory) end with one line on stderr and a non-zero exit.
"""

import gc
import signal
import sys
from dataclasses import fields

import torch

from train.config import TrainConfig
from train.datasets import DataError
from train.loop import Interrupted, TrainingError, train
from train.timing import process_start
from weights.load import HubUnavailable, WeightsError
from vit.checkpoint import CheckpointError
from vit.cli import ArgumentParser, device_name, is_out_of_memory, positive_int
from vit.device import AMP_DTYPES
from vit.families import model_config, model_spec

HELP = {  # every flag's help: what it means, and what its default does
    "data": "'cifar10' (downloaded into --data-root), an ImageFolder root with train/ and test/ (or val/), "
            "or an extracted cifar-10-batches-py folder (default: cifar10)",
    "data_root": "where --data cifar10 is downloaded to (default: data)",
    "model": "a timm model name, optionally with a weights tag (name.tag): a ViT, DeiT, DeiT-III, DINOv2, CLIP, "
             "SigLIP or GAP ViT; python -m vit lists them (default: vit_base_patch16_224)",
    "pretrained": "'default' (timm's ImageNet weights for --model, from the Hugging Face hub or its cache), "
                  "a hub id, a local .safetensors/.pth file, or 'none' for random weights (default: default)",
    "img_size": "side of the model's input in pixels, a multiple of the patch size (default: 224)",
    "epochs": "passes over the training set (default: 3)",
    "batch_size": "images per step (default: 128)",
    "lr": "peak learning rate of AdamW (default: 1e-4)",
    "weight_decay": "AdamW weight decay, not applied to norms, biases, layer scales, learned tokens and positions (default: 0.05)",
    "warmup_fraction": "fraction of all steps spent warming the learning rate up from 0 (default: 0.05)",
    "label_smoothing": "cross-entropy label smoothing (default: 0.1)",
    "grad_clip": "clip the gradients' global norm to this (default: 1.0)",
    "crop_padding": "random-crop padding in pixels for small images (default: 4)",
    "device": "auto (a GPU if there is one, else the CPU), cpu, cuda or cuda:N (default: auto)",
    "amp": "autocast precision: bf16, fp16 or none (default: bf16 on a GPU, none (fp32) on CPU)",
    "eval_batch_size": "images per evaluation batch (default: twice --batch-size)",
    "num_workers": "processes decoding images (and DataLoader workers for large images) (default: one per CPU core, at most 16)",
    "output_dir": "where the model, last.pt, metrics.jsonl and plots go (default: runs/cifar10)",
    "name": "data set name in vit_<name>_finetuned.pth (default: from --data, 'cifar10' for any CIFAR-10 copy)",
    "seed": "seed for initialisation, data order and augmentation (default: 0)",
    "max_train_samples": "train on a seeded random subset of this many images (default: all)",
    "max_eval_samples": "evaluate on a seeded random subset of this many images (default: all)",
    "resume": "a last.pt to continue from, with the flags of the run that wrote it (default: start afresh)",
    "cache_dir": "where decoded small images are cached (default: $XDG_CACHE_HOME/vit-from-scratch, else ~/.cache/vit-from-scratch)",
    "log_every": "steps between progress-bar updates; each one waits for the GPU (default: 25)",
}
POSITIVE = ("img_size", "epochs", "batch_size", "eval_batch_size", "max_train_samples", "max_eval_samples", "log_every")  # >= 1


def build_parser() -> ArgumentParser:
    """One flag per TrainConfig field, each with a help text that names its default."""
    parser = ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name == "compile":
            parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                                help="torch.compile the model (default: on for a GPU, off on CPU)")
            parser.add_argument("--no-compile", dest="compile", action="store_false", help="do not torch.compile, even on a GPU")
        elif field.name == "skip_bad_images":
            parser.add_argument(flag, action="store_true",
                                help="skip unreadable training images (default: stop and list them)")
        elif field.name == "amp":
            parser.add_argument(flag, choices=list(AMP_DTYPES), default=None, help=HELP[field.name])
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if field.name in POSITIVE:
                kind = positive_int
            if field.name == "device":
                kind = device_name
            parser.add_argument(flag, type=kind, default=default, help=HELP[field.name])
    return parser


def parse_args(argv=None) -> TrainConfig:
    """Flags -> TrainConfig; a bad flag is one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_spec(args.model)
    except ValueError as error:
        parser.error(f"argument --model: {error}")
    patch = model_config(args.model).patch_size
    if args.img_size % patch:
        parser.error(f"argument --img-size: {args.img_size} is not a multiple of {args.model}'s patch size {patch} "
                     f"(e.g. {max(patch, round(args.img_size / patch) * patch)})")
    return TrainConfig(**vars(args))


def main(argv=None) -> int:
    cfg = parse_args(argv)
    distributed = "RANK" in __import__("os").environ  # started by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    try:
        train(cfg, started=process_start())
        if distributed:
            gc.collect()  # free the DDP wrapper (reference cycles) before gloo's threads are torn down
            torch.distributed.barrier()  # all ranks finish before any tears the process group down
        return 0
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:  # Ctrl-C before the first step (decoding, compiling) or after the last
        print("stopped by SIGINT outside the training steps; every file written so far is complete", file=sys.stderr)
        return 128 + signal.SIGINT
    except (RuntimeError, MemoryError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        print(f"error: out of memory at --batch-size {cfg.batch_size}; lower --batch-size "
              "(or --eval-batch-size)", file=sys.stderr)
        return 1
    except HubUnavailable as error:
        print(f"error: {error.advice('--pretrained')}", file=sys.stderr)
        return 1
    except (DataError, WeightsError, CheckpointError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
