"""`python -m train`: fine-tune a ViT (by default timm's ViT-B/16 on CIFAR-10, 3 epochs), or pretrain one as a masked autoencoder (--objective mae).

Every flag maps to a field of train.config.TrainConfig. Expected failures (bad data, impossible
downloads, bad checkpoints, out of memory) end with one line on stderr and a non-zero exit.
"""

import os
import signal
import sys
from dataclasses import fields

import torch

from train.config import TrainConfig
from train.datasets import DataError
from train.distributed import leave
from train.lora import parse_targets
from train.loop import train
from train.preflight import TrainingError
from train.state import Interrupted
from train.probe import probe
from train.timing import process_start
from weights.load import HubUnavailable, WeightsError
from vit.checkpoint import CheckpointError
from vit.cli import ArgumentParser, device_name, is_out_of_memory, positive_int
from vit.families import model_config, model_spec

def build_parser() -> ArgumentParser:
    """One flag per TrainConfig field, its help (which names the default) beside the field."""
    parser = ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        flag, meta = "--" + field.name.replace("_", "-"), field.metadata
        default = getattr(defaults, field.name)
        if field.name == "compile":
            parser.add_argument("--compile", dest="compile", action="store_true", default=None, help=meta["help"])
            parser.add_argument("--no-compile", dest="compile", action="store_false", help="do not torch.compile, even on a GPU")
        elif isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=meta["help"])
        elif meta["choices"]:
            parser.add_argument(flag, choices=meta["choices"], default=default, help=meta["help"])
        else:
            kind = meta["kind"] or {int: int, float: float}.get(type(default), str)
            if meta["positive"]:
                kind = positive_int
            if field.name == "device":
                kind = device_name
            parser.add_argument(flag, type=kind, default=default, help=meta["help"])
    return parser


FRACTIONS = {  # flags that are fractions, and which ends they may reach
    "layer_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),  # 1: every layer at lr
    "drop_path": (lambda v: 0 <= v < 1, "in [0, 1)"),  # 0: off
    "ema": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mask_ratio": (lambda v: 0 < v < 1, "in (0, 1)"),
}
MAE_WITHOUT = {"probe": "evaluates a backbone: give it the pretrained file (--pretrained vit_<name>_mae.pth)",
               "lora": "adapts a trained model; MAE pretraining trains every weight",
               "layer_decay": "is for fine-tuning", "ema": "is for fine-tuning"}  # flags --objective mae refuses, and why


def parse_args(argv=None) -> TrainConfig:
    """Flags -> TrainConfig; a bad flag is one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_spec(args.model)
    except ValueError as error:
        parser.error(f"argument --model: {error}")
    for name, (allowed, bounds) in FRACTIONS.items():
        value = getattr(args, name)
        if value is not None and not allowed(value):
            parser.error(f"argument --{name.replace('_', '-')}: {value} is not {bounds}")
    try:
        parse_targets(args.lora_targets)
    except ValueError as error:
        parser.error(f"argument --lora-targets: {error}")
    if args.lora_alpha is not None and not args.lora:
        parser.error("argument --lora-alpha: needs --lora RANK")
    if args.fsdp and "RANK" not in os.environ:
        parser.error("argument --fsdp: shards over the processes torchrun starts: "
                     "torchrun --nproc_per_node N -m train ... --fsdp")
    if args.fsdp and args.amp == "fp16":
        parser.error("argument --fsdp: with --amp bf16 or none (fp16's loss scaling is not sharded)")
    if args.probe and (args.fsdp or args.lora or args.grad_checkpointing):
        parser.error("argument --probe: evaluates the frozen backbone in one process; --fsdp, --lora and "
                     "--grad-checkpointing are for fine-tuning")
    if args.objective == "mae":
        check_mae(parser, args)
    if args.patch_size and args.pretrained != "none":
        parser.error("argument --patch-size: builds a model from scratch (--pretrained none); pretrained weights "
                     "bring their own patch size")
    patch = args.patch_size or model_config(args.model).token_stride  # the patch size (a hybrid's: times its stem's stride)
    if args.img_size % patch:
        parser.error(f"argument --img-size: {args.img_size} is not a multiple of {args.model}'s patch size {patch} "
                     f"(e.g. {max(patch, round(args.img_size / patch) * patch)})")
    return TrainConfig(**vars(args))


def check_mae(parser: ArgumentParser, args) -> None:
    """--objective mae's flags: the model is a paper ViT (vit/mae.py's encoder), no fine-tuning flag."""
    from vit.paper import NAMES

    for name, why in MAE_WITHOUT.items():
        if getattr(args, name):
            parser.error(f"argument --{name.replace('_', '-')}: not with --objective mae; it {why}")
    if args.model.split(".")[0] not in NAMES:
        parser.error(f"argument --model: --objective mae pretrains the paper's ViTs (vit/paper.py's NAMES), "
                     f"e.g. vit_base_patch16_224; not {args.model}")


def main(argv=None) -> int:
    cfg = parse_args(argv)
    distributed = "RANK" in os.environ  # started by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    finished = False  # under torchrun: whether every rank got to the end (train/distributed.leave)
    try:
        if cfg.probe:
            probe(cfg)
            return 0
        train(cfg, started=process_start())
        finished = True
        return 0
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:  # Ctrl-C before the first step (decoding, compiling) or after the last
        print("stopped by SIGINT outside the training steps; every file written so far is complete", file=sys.stderr)
        if __name__ == "__main__":  # the command itself (not a caller of main()): leave now, with 130
            # A KeyboardInterrupt that passed through code run by exec() (dataclasses makes its
            # methods so, and compiling defines many) marks the interpreter, and at exit CPython then
            # kills itself with SIGINT whatever main returned; and a finaliser could still wait on
            # the decoding thread. Every file is complete (atomic writes): nothing is left to do.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signal.SIGINT)
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
            leave(finished)


if __name__ == "__main__":
    sys.exit(main())
