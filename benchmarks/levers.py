"""What three of the job's levers give, each measured beside its alternative.

    python -m benchmarks.levers                    # a GPU: ViT-B/16, 224 px, the whole CIFAR-10 copy
    python -m benchmarks.levers --device cpu --model vit_tiny_patch16_224 --img-size 32 \\
        --max-train-samples 2048 --max-eval-samples 512         # any machine: a small smoke run

1. decoding the JPEGs with 4 processes (the old default) vs one per core (up to 16);
2. evaluation eager (what train does, under torch.compiler.set_stance("force_eager")) vs through
   the compiled blocks (a second, inference-only graph each: its compile time, then its speed);
3. last.pt written in the training thread (atomic_save) vs in the background (BackgroundSaver:
   the time training waits is the copy to the CPU, into pinned memory from a GPU), and the file
   read back: it must hold the model's weights exactly.
"""

import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, timed
from benchmarks.train import DEFAULT_DATA
from train.config import TrainConfig
from train.datasets import load_dataset
from train.loop import prepare, train_one_epoch
from train.objectives import evaluate
from train.preflight import eager
from train.state import EpochProgress, save_last
from train.stop import StopRequest
from vit.checkpoint import safe_load
from vit.cli import ArgumentParser, device_name
from vit.cli import pick_device


def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=pick_device("auto").type, type=device_name)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"levers on {machine(device)}, {args.model} @ {args.img_size}px, batch {args.batch_size}")

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=args.data, model=args.model, pretrained="none", img_size=args.img_size,
                          batch_size=args.batch_size, device=args.device, output_dir=f"{tmp}/out",
                          max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                          log_every=10**9)
        for workers in sorted({4, cfg.num_workers}):
            folder = f"{tmp}/decoded-{workers}"  # empty: a cold decode
            took = timed(lambda: load_dataset(TrainConfig(**{**vars(cfg), "num_workers": workers,
                                                                "cache_dir": folder})), device)
            print(f"decode, {workers:2d} processes ({os.cpu_count()} cores): {took:6.2f} s")

        cfg.cache_dir = f"{tmp}/decoded-{cfg.num_workers}"
        run = prepare(cfg)
        stop = StopRequest()
        try:
            steps = min(20, len(run.train_batches))
            run.train_batches.epoch = _first(run.train_batches.epoch, steps)
            train_one_epoch(run, 0, 0, EpochProgress.zeros(run.device), stop)  # compiles the training graph
        finally:
            stop.restore()
        run.model.eval()
        count = len(run.data.test.labels)

        def evaluation():
            evaluate(run.model, run.test_batches, len(run.data.class_names), run.amp_dtype, desc="eval")

        with eager():
            evaluation()  # warm-up
            eager_s = timed(evaluation, device)
        compiled_first = timed(evaluation, device) if run.use_compile else float("nan")
        compiled_s = timed(evaluation, device) if run.use_compile else float("nan")
        print(f"eval, {count} images: eager {eager_s:.2f} s ({count / eager_s:.0f} img/s) | compiled: first call "
              f"{compiled_first:.2f} s (compiling), then {compiled_s:.2f} s ({count / compiled_s:.0f} img/s)")

        progress = EpochProgress.zeros(run.device)
        inline = timed(lambda: save_last(run, 1, 0, progress), device)
        start = time.perf_counter()
        save_last(run, 1, 0, progress, background=True)
        waited = time.perf_counter() - start
        run.saver.wait()
        written = time.perf_counter() - start
        path = Path(cfg.output_dir) / "last.pt"
        saved = safe_load(path)["state_dict"]  # the snapshot (pinned memory on a GPU) is what was trained
        same = all(torch.equal(saved[k], v.cpu()) for k, v in run.model.state_dict().items())
        print(f"last.pt ({path.stat().st_size / 2**20:.0f} MiB): in the training thread {inline:.2f} s | in the "
              f"background: training waits {waited:.2f} s, the file is on disk after {written:.2f} s, "
              f"{'holds the model exactly' if same else 'DIFFERS FROM THE MODEL'}")
        if not same:
            raise SystemExit("the background save wrote other weights than the model's")


def _first(epoch, steps: int):
    """An epoch() of only its first `steps` batches."""
    def shortened(*args, **kwargs):
        for step, batch in enumerate(epoch(*args, **kwargs)):
            if step == steps:
                return
            yield batch
    return shortened


if __name__ == "__main__":
    main()
