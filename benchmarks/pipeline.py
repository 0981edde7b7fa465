"""Input pipeline alone: normalised, augmented 224 px training batches per second on CPU.

    python -m benchmarks.pipeline                  # ours vs the seed-style DataLoader, same cores

"ours" is train.batches.TensorBatches over the decoded uint8 tensor (gather, random crop + flip,
resize, normalise, a whole batch at a time); "seed" is a DataLoader over the JPEG folder with
torchvision Resize(224)/ToTensor/Normalize in worker processes (one per core). Target: >= 2x.
"""

import argparse
import os
import time
from pathlib import Path

import torch

from benchmarks.seed import seed_loader
from benchmarks.train import DEFAULT_DATA
from train.config import TrainConfig
from train.batches import make_batches
from train.datasets import load_dataset
from vit.config import DEFAULT_MEAN, DEFAULT_STD


def rate(batches, count: int, batch_size: int) -> float:
    iterator = iter(batches)
    next(iterator)  # warm-up (worker start-up, first allocation)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return count * batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per side")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="seed DataLoader workers")
    args = parser.parse_args(argv)

    cfg = TrainConfig(data=args.data, img_size=args.img_size, batch_size=args.batch_size,
                      max_train_samples=(args.batches + 2) * args.batch_size, max_eval_samples=10)
    started = time.perf_counter()
    data = load_dataset(cfg)  # decoded once, then cached on disk
    print(f"decode/cache load of {len(data.train.labels)} images: {time.perf_counter() - started:.2f} s (once per data set)")
    ours = make_batches(data.train, cfg, torch.device("cpu"), DEFAULT_MEAN, DEFAULT_STD, train=True)
    seed = seed_loader(Path(args.data) / "train", args.img_size, args.batch_size, args.workers)
    print(f"{args.batch_size} x {args.img_size}px batches on {torch.get_num_threads()} threads / {args.workers} workers")
    ours_rate = rate(ours.epoch(0), args.batches, args.batch_size)
    seed_rate = rate(seed, args.batches, args.batch_size)
    print(f"ours: {ours_rate:8.1f} img/s | seed: {seed_rate:8.1f} img/s | ratio {ours_rate / seed_rate:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
