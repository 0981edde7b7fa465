"""The whole fine-tuning job as a user runs it, cold, with the run's own account of its time.

    python -m benchmarks.job                       # a GPU: the default job (ViT-B/16, 224 px, 3 epochs)
    python -m benchmarks.job --tiny                # any machine (the default without a GPU): a small job
    python -m benchmarks.job -- --batch-size 256 --lr 2e-4    # extra flags go to python -m train

`python -m train` runs in a fresh process with empty caches (a new torch.compile cache and a new
decoded-image cache, both in a temporary folder), on CIFAR-10 (JPEG q75 copy) with random initial
weights (`--pretrained none`: the GPU machines here cannot download timm's). It prints the phase
table from the run's timing record (metrics.jsonl) and the wall time measured outside the
process. Target for the default job on one H100/H200: under 60 s.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.train import DEFAULT_DATA
from train.timing import PHASES

TINY = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--epochs", "1", "--batch-size", "64",
        "--max-train-samples", "1024", "--max-eval-samples", "512", "--device", "cpu", "--num-workers", "2"]


def run_job(data: str, extra: list[str], folder: Path) -> tuple[dict, float, str]:
    """(the run's timing record, wall seconds measured here, its stdout)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_CACHE_DIR": str(folder / "triton")}
    command = [sys.executable, "-m", "train", "--data", data, "--pretrained", "none",
               "--output-dir", str(folder / "out"), "--cache-dir", str(folder / "decoded"), *extra]
    print("running:", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"the job failed (exit {result.returncode}):\n{result.stdout[-2000:]}")
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in records if r["kind"] == "timing"), wall, result.stdout


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ImageFolder root with train/ and test/")
    parser.add_argument("--tiny", action="store_true", default=not torch.cuda.is_available(),
                        help="a small CPU job (default when there is no GPU)")
    parser.add_argument("extra", nargs="*", help="flags for python -m train, after --")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        timing, wall, stdout = run_job(args.data, (TINY if args.tiny else []) + args.extra, Path(tmp))
    for line in stdout.splitlines():
        if line.startswith(("epoch ", "vit_")):
            print(line)
    print(f"\n{'phase':>8}  {'seconds':>8}  share")
    for phase in (*PHASES, "other", "total"):
        print(f"{phase:>8}  {timing[phase]:8.1f}  {timing[phase] / timing['total']:5.1%}")
    print(f"{'wall':>8}  {wall:8.1f}  (measured outside the process, interpreter exit included)")


if __name__ == "__main__":
    main()
