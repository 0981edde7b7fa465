"""Our ViT against timm's: forward and training-step throughput, same configuration, same process.

    python -m benchmarks.model                                   # CPU, fp32, ViT-B/16 at 224
    python -m benchmarks.model --device cuda --dtype bf16 --batch-size 256
    python -m benchmarks.model --device cuda --dtype bf16 --batch-size 256 --compile
    python -m benchmarks.model --model vit_small_patch14_dinov2     # any family's name (python -m vit)

Runs alternate (ours, timm, ours, timm, ...) and the median images/s of each is reported,
with ours / timm as the ratio.
"""


import torch
import torch.nn.functional as F

import vit
from benchmarks.common import alternate, machine
from vit.cli import ArgumentParser, device_name
from vit.cli import pick_device

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_step(model, images, labels, mode: str, dtype, steps: int):
    """A closure that runs `steps` forward passes (mode 'forward') or training steps ('train')."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5) if mode == "train" else None

    def run():
        for _ in range(steps):
            with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
                if mode == "forward":
                    with torch.no_grad():
                        model(images)
                    continue
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.model", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=pick_device("auto").type, type=device_name)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed runs per side")
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    args = parser.parse_args(argv)

    import timm

    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {
        # 1000 classes on both sides: backbones (DINOv2, SigLIP) have none by default
        "ours": vit.create_model(args.model, num_classes=1000, img_size=args.img_size).to(device),
        "timm": timm.create_model(args.model, num_classes=1000, img_size=args.img_size, pretrained=False).to(device),
    }
    if args.compile:
        models = {name: torch.compile(model) for name, model in models.items()}
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    dtype = DTYPES[args.dtype]

    print(f"{args.model} @ {args.img_size}px, batch {args.batch_size}, {args.dtype}"
          f"{' + torch.compile' if args.compile else ''}, on {machine(device)}")
    for mode in args.modes:
        for model in models.values():
            model.train(mode == "train")
        steps = {name: make_step(m, images, labels, mode, dtype, args.steps) for name, m in models.items()}
        for fn in steps.values():  # warm-up: allocator, kernels, compilation
            fn()
        rates = alternate(steps, args.batch_size * args.steps, args.repeats, device)
        print(f"{mode:>8}: ours {rates['ours']:9.1f} img/s | timm {rates['timm']:9.1f} img/s | "
              f"ratio {rates['ours'] / rates['timm']:.3f}")


if __name__ == "__main__":
    main()
