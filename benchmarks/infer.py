"""Inference over a folder of images on CPU: `infer.Classifier` vs the seed-style one-at-a-time script.

    python -m benchmarks.infer                                   # ViT-B/16, 300 CIFAR-10 test images
    python -m benchmarks.infer --num-images 1000 --with-bf16     # also time bf16 autocast
    python -m benchmarks.infer --with-onnx                       # also time the ONNX export (onnxruntime)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.infer   # an AMX/AVX-512 CPU as AVX2

Both sides load the same weights and print one line per image. The checkpoint says it was
evaluated in bf16, as the default job's (trained on a GPU) does. "ours (default)" is
`python -m infer` with no precision flags: it follows that bf16 where the CPU has AMX and
uses dynamic int8 elsewhere (infer.predict.choose_precision); fp32 and int8 are also timed
on their own. "seed" opens, transforms and classifies each image in turn, in fp32.
Targets: ours (default) >= 2x seed on an AVX2 CPU, >= 3x with AMX.
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
from vit.checkpoint import ModelCard, save_model
from infer.cpu import cpu_kind
from infer.images import evenly_spaced, expand_paths

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_checkpoint(model_name: str, img_size: int, path: Path) -> None:
    """A fine-tuned checkpoint (random weights: speed does not depend on them), marked as
    evaluated in bf16, as the default job, trained on a GPU, writes it."""
    model = vit.create_model(model_name, num_classes=10, img_size=img_size)
    save_model(path, model, ModelCard(model_name, img_size, tuple(CLASSES), vit.DEFAULT_MEAN, vit.DEFAULT_STD,
                                      eval_amp="bf16"))


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


def ours(checkpoint: Path, paths: list[Path], amp: str, quantize: str, precisions: dict, name: str,
         batch_size: int | None = None, workers: int = 2) -> None:
    classifier = Classifier(checkpoint, device="cpu", amp=amp, quantize=quantize, batch_size=batch_size, workers=workers)
    precisions[name] = classifier.precision.name
    for p in classifier.iter_classify(paths):
        print(f"{p.path}: {p.top[0][0]} ({p.top[0][1]:.1%})")


def timed(fn, *args) -> float:
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        fn(*args)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(DEFAULT_DATA / "test"), help="folder of images")
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--with-bf16", action="store_true", help="also time --amp bf16 (slow without AMX)")
    parser.add_argument("--with-onnx", action="store_true", help="also time the model exported to ONNX (onnxruntime)")
    parser.add_argument("--sweep", action="store_true",
                        help="instead: time the default precision at batch 1/8/16 with 1/2/4 decoding threads")
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep(args)

    paths = evenly_spaced(expand_paths([args.images]), args.num_images)
    sides = {"ours (default)": ("auto", "auto"), "ours fp32": ("none", "none"), "ours int8": ("auto", "int8")}
    if args.with_bf16:
        sides["ours bf16"] = ("bf16", "none")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pth"
        make_checkpoint(args.model, args.img_size, checkpoint)
        print(f"{len(paths)} images, {args.model} @ {args.img_size}px, checkpoint evaluated in bf16, on {cpu_kind()}")
        precisions = {"seed": "fp32"}
        seconds = {"seed": timed(seed_script, checkpoint, paths)}
        for name, (amp, quantize) in sides.items():
            seconds[name] = timed(ours, checkpoint, paths, amp, quantize, precisions, name)
        if args.with_onnx:  # the same weights through python -m weights export --format onnx
            from infer.export import export

            export(checkpoint, "onnx", Path(tmp) / "model.onnx")
            seconds["ours onnx"] = timed(ours, Path(tmp) / "model.onnx", paths, "auto", "auto", precisions, "ours onnx")
    for name, s in seconds.items():
        print(f"{name:>15} ({precisions[name]:>4}): {s:7.1f} s  {len(paths) / s:7.1f} img/s  "
              f"{seconds['seed'] / s:5.2f}x seed")


def sweep(args) -> None:
    """Batch size x decoding threads, for the default precision: which pair is fastest here."""
    paths = evenly_spaced(expand_paths([args.images]), args.num_images)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pth"
        make_checkpoint(args.model, args.img_size, checkpoint)
        print(f"{len(paths)} images, {args.model} @ {args.img_size}px, on {cpu_kind()}")
        for batch_size in (1, 8, 16):
            for workers in (1, 2, 4):
                precisions = {}
                seconds = timed(ours, checkpoint, paths, "auto", "auto", precisions, "x", batch_size, workers)
                print(f"batch {batch_size:2d}, {workers} decoding threads ({precisions['x']}): "
                      f"{len(paths) / seconds:6.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
