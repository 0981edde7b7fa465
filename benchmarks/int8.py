"""Dynamic int8 against fp32 on a labelled folder: how many predictions change, and accuracy.

    python -m benchmarks.int8 --checkpoint runs/quick/vit_cifar10_finetuned.pth --data ../shared/data/cifar10-jpg/test

Both sides are `infer.Classifier` on the CPU with the same checkpoint (`--quantize none` and
`--quantize int8`); every image is classified by both. Target: >= 99% of top-1 predictions
unchanged.
"""

import argparse
import time
from pathlib import Path

from infer import Classifier
from infer.cpu import cpu_kind
from infer.images import expand_paths, list_class_folders


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="folder of <class>/<image>")
    args = parser.parse_args(argv)

    paths, truth = [], []
    for name in list_class_folders(args.data):
        found = expand_paths([Path(args.data) / name])
        paths += found
        truth += [name] * len(found)
    predictions, seconds = {}, {}
    for quantize in ("none", "int8"):
        classifier = Classifier(args.checkpoint, device="cpu", amp="none" if quantize == "none" else "auto",
                                quantize=quantize)
        start = time.perf_counter()
        predictions[quantize] = [p.top[0][0] for p in classifier.classify(paths)]
        seconds[quantize] = time.perf_counter() - start
    fp32, int8 = predictions["none"], predictions["int8"]
    agree = sum(a == b for a, b in zip(fp32, int8)) / len(paths)
    accuracy = {k: sum(p == t for p, t in zip(v, truth)) / len(paths) for k, v in predictions.items()}
    print(f"{len(paths)} images, {classifier.card.model_name} @ {classifier.card.img_size}px, on {cpu_kind()}")
    print(f"top-1 unchanged by int8: {agree:.2%} ({sum(a != b for a, b in zip(fp32, int8))} changed)")
    print(f"accuracy: fp32 {accuracy['none']:.2%}, int8 {accuracy['int8']:.2%} "
          f"(difference {100 * (accuracy['int8'] - accuracy['none']):+.2f} points)")
    print(f"speed: fp32 {len(paths) / seconds['none']:.1f} img/s, int8 {len(paths) / seconds['int8']:.1f} img/s")


if __name__ == "__main__":
    main()
