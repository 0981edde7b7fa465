"""`python -m train`: fine-tune a ViT (by default timm's ViT-B/16 on CIFAR-10, 3 epochs).

Every flag maps to a field of train.config.TrainConfig. Expected failures (bad data, impossible
downloads, bad checkpoints, out of memory) end with one line on stderr and a non-zero exit.
"""

import sys
from dataclasses import fields

import torch

from train.checkpoint import CheckpointError
from train.config import TrainConfig
from train.data import DataError
from train.loop import Interrupted, TrainingError, train
from weights.load import WeightsError
from vit.cli import ArgumentParser, is_out_of_memory

HELP = {
    "data": "'cifar10' (download into --data-root), an ImageFolder root with train/ and test/ (or val/), "
            "or an extracted cifar-10-batches-py folder",
    "pretrained": "'default' (timm's ImageNet weights for --model), a hub id, a local file, or 'none'",
    "amp": "bf16, fp16 or none (default: bf16 on a GPU, none on CPU)",
    "device": "auto, cpu or cuda",
}


def parse_args(argv=None) -> TrainConfig:
    parser = ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name == "compile":
            parser.add_argument("--compile", dest="compile", action="store_true", default=None,
                                help="torch.compile the model (default: on for a GPU)")
            parser.add_argument("--no-compile", dest="compile", action="store_false")
        elif field.name == "skip_bad_images":
            parser.add_argument(flag, action="store_true", help="skip unreadable training images")
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if field.name in ("max_train_samples", "max_eval_samples", "eval_batch_size"):
                kind = int
            parser.add_argument(flag, type=kind, default=default, help=HELP.get(field.name, f"default: {default}"))
    args = parser.parse_args(argv)
    return TrainConfig(**vars(args))


def main(argv=None) -> int:
    cfg = parse_args(argv)
    distributed = "RANK" in __import__("os").environ  # started by torchrun
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    try:
        train(cfg)
        if distributed:
            torch.distributed.barrier()  # all ranks finish before any tears the process group down
        return 0
    except Interrupted as stop:
        print(stop, file=sys.stderr)
        return 128 + stop.signum
    except (RuntimeError, MemoryError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        print(f"error: out of memory at --batch-size {cfg.batch_size}; lower --batch-size "
              "(or --eval-batch-size)", file=sys.stderr)
        return 1
    except (DataError, WeightsError, CheckpointError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
