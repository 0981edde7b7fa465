"""Whole runs on a machine other work keeps busy, against the same runs on a quiet one
(benchmarks/README.md, "A busy machine"): `python -m infer` with PyTorch's threads on every core
(its default) and with one (OMP_NUM_THREADS=1), and the lean ONNX Runtime and OpenVINO scripts
of benchmarks/cpu_runtimes.py.

    python -m benchmarks.busy_machine --num-images 300 --hogs 2

The load: --hogs processes, each spinning one core in a Python loop (--hog python) or multiplying
matrices with PyTorch's threads on every core (--hog torch: another ML job), started before the timed
runs and stopped after them. Prints seconds per run and how much each slowed under the load.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.cpu_runtimes import image_folder, stand_in, whole_process

HOGS = {"python": "while True: pass",  # one core each, no threads
        "torch": "import torch\nx = torch.randn(512, 512)\nwhile True: x @ x"}  # another PyTorch job, every core


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.busy_machine", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--hogs", type=int, default=2, help="processes spinning a core each (default: 2)")
    parser.add_argument("--hog", choices=tuple(HOGS), default="python", help="what each hog runs (default: python)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from infer.cpu import cpu_kind
    from infer.export import export

    work = Path(tempfile.mkdtemp(prefix="busy-machine-"))
    os.environ["VIT_CACHE_DIR"] = str(work / "cache")
    folder = image_folder(args.num_images, work)
    checkpoint = stand_in(args.model, work)
    onnx = work / f"{checkpoint.stem}.onnx"
    export(checkpoint, "onnx", onnx)
    from vit.checkpoint import load_model

    _, card = load_model(checkpoint)
    onnx.with_suffix(".json").write_text(json.dumps(
        {"img_size": card.img_size, "mean": list(card.mean), "std": list(card.std), "class_names": list(card.class_names)}))
    cores = len(os.sched_getaffinity(0))
    infer = [sys.executable, "-m", "infer", "--checkpoint", str(checkpoint), "--image", str(folder)]
    lean = [sys.executable, "-m", "benchmarks.cpu_runtimes", "--worker"]
    commands = {f"ours: python -m infer ({cores} threads, the default)": infer,
                "ours, OMP_NUM_THREADS=1": ["env", "OMP_NUM_THREADS=1", *infer],
                "ONNX Runtime fp32": [*lean, "ort", str(onnx), str(folder)],
                "OpenVINO default": [*lean, "openvino", str(onnx), str(folder)]}
    print(f"machine: {cpu_kind()}; {cores} cores; PyTorch {torch.__version__}; date {time.strftime('%Y-%m-%d')}; "
          f"{args.model}, {args.num_images} images, whole process, best of {args.repeats}")
    os.environ.pop("OMP_NUM_THREADS", None)  # (each command's own choice, or the one it is given)
    quiet = whole_process(commands, args.repeats, env={})
    hogs = [subprocess.Popen([sys.executable, "-c", HOGS[args.hog]]) for _ in range(args.hogs)]
    try:
        time.sleep(5)  # the load average rises with them
        print(f"load with {args.hogs} {args.hog} hogs: {os.getloadavg()[0]:.1f}")
        busy = whole_process(commands, args.repeats, env={})
    finally:
        for hog in hogs:
            hog.kill()
    print(f"| run | quiet (s) | busy, {args.hogs} hogs (s) | slowed |")
    print("| --- | --- | --- | --- |")
    for label in commands:
        print(f"| {label} | {quiet[label]:.1f} | {busy[label]:.1f} | {busy[label] / quiet[label]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
