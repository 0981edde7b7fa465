"""Inference over a folder of images on CPU: `infer.Classifier` vs the seed-style one-at-a-time script.

    python -m benchmarks.infer                                  # ViT-B/16, 1,000 CIFAR-10 test images
    python -m benchmarks.infer --model vit_tiny_patch16_224 --num-images 1000

Both sides load the same weights and print one line per image. "ours" batches, decodes in threads,
and is timed with --amp bf16 (its default for a checkpoint trained on a GPU, as the main job's is)
and --amp none (fp32); "seed" opens, transforms and classifies each image in turn, in fp32.
Target: ours >= 3x seed.
"""

import argparse
import io
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
from PIL import Image

import vit
from benchmarks.seed import seed_transform
from benchmarks.train import DEFAULT_DATA
from infer import Classifier
from vit.images import expand_paths

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_checkpoint(model_name: str, img_size: int, path: Path) -> None:
    """A checkpoint in train's format (random weights: speed does not depend on them)."""
    model = vit.create_model(model_name, num_classes=10, img_size=img_size)
    torch.save({"state_dict": model.state_dict(), "model_name": model_name, "img_size": img_size, "num_classes": 10,
                "class_names": CLASSES, "mean": [0.5] * 3, "std": [0.5] * 3, "source_size": None,
                "eval_amp": "bf16"}, path)  # as the default job, trained on a GPU, writes it


def seed_script(checkpoint: Path, paths: list[Path]) -> None:
    """What a first inference script looks like: one image at a time."""
    card = torch.load(checkpoint, weights_only=True)
    model = vit.create_model(card["model_name"], num_classes=card["num_classes"], img_size=card["img_size"])
    model.load_state_dict(card["state_dict"])
    model.eval()
    transform = seed_transform(card["img_size"], card["mean"], card["std"])
    for path in paths:
        image = transform(Image.open(path).convert("RGB"))
        with torch.no_grad():
            probs = model(image[None]).softmax(dim=1)[0]
        confidence, index = probs.max(0)
        print(f"{path}: {card['class_names'][index]} ({confidence:.1%})")


def ours(checkpoint: Path, paths: list[Path], amp: str) -> None:
    classifier = Classifier(checkpoint, device="cpu", amp=amp)
    for p in classifier.classify(paths):
        print(f"{p.path}: {p.top[0][0]} ({p.top[0][1]:.1%})")


def timed(fn, *args) -> float:
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        fn(*args)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(DEFAULT_DATA / "test"), help="folder of images")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args(argv)

    paths = expand_paths([args.images])[:: max(1, len(expand_paths([args.images])) // args.num_images)][: args.num_images]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pth"
        make_checkpoint(args.model, args.img_size, checkpoint)
        print(f"{len(paths)} images, {args.model} @ {args.img_size}px, CPU with {torch.get_num_threads()} threads")
        seconds = {"seed (fp32, one at a time)": timed(seed_script, checkpoint, paths),
                   "ours (default: bf16)": timed(ours, checkpoint, paths, "auto"),
                   "ours (--amp none: fp32)": timed(ours, checkpoint, paths, "none")}
    seed_seconds = seconds["seed (fp32, one at a time)"]
    for name, s in seconds.items():
        print(f"{name:>28}: {s:7.1f} s  {len(paths) / s:7.1f} img/s  {seed_seconds / s:5.2f}x seed")


if __name__ == "__main__":
    main()
