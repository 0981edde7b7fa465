"""End-to-end training throughput with real data: our loop vs synthetic data vs the seed loop.

    python -m benchmarks.train --compare seed synthetic                       # on a GPU: ViT-B/16, 224 px, bf16
    python -m benchmarks.train --device cpu --model vit_tiny_patch16_224 --img-size 32 --batch-size 32 --steps 10

"ours" is train.loop itself (GPU-resident uint8 data, device-side augmentation and resize, bf16
autocast, torch.compile, fused AdamW, no host sync per step); "synthetic" is the same loop fed a
fixed pre-made batch (the ceiling the input pipeline should reach: target >= 95%); "seed" is a
DataLoader with torchvision Resize/ToTensor/Normalize, fp32, Adam (target: ours >= 3x).
MFU counts 3 x forward MACs x 2 FLOP per image against --peak-tflops.

Levers of the steady rate, one setting per process (compiled graphs keep what they were traced with):
    python -m benchmarks.train --compare --attention cudnn          # flash, cudnn, efficient or math attention
    python -m benchmarks.train --compare --inductor triton.cudagraphs=True    # CUDA graphs (reduce-overhead)
"""

import ast
import contextlib
import time
from pathlib import Path

import torch

from benchmarks.common import machine, synchronize
from benchmarks.seed import seed_loader, seed_train_steps
from train.config import TrainConfig
from train.loop import prepare, train_one_epoch
from train.state import EpochProgress
from train.stop import StopRequest
from vit.cli import ArgumentParser, device_name
from vit.cli import pick_device
from vit.families import model_config

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"


class SyntheticBatches:
    """Stands in for the real batches: one fixed batch on the device, no input work at all."""

    def __init__(self, real, steps: int):
        images, labels = next(iter(real.epoch(0)))
        self.images, self.labels, self.steps, self.device = images, labels, steps, real.device

    def __len__(self):
        return self.steps

    def epoch(self, epoch, start_step=0):
        for _ in range(start_step, self.steps):
            yield self.images, self.labels


def ours(args, synthetic: bool) -> float:
    cfg = TrainConfig(data=args.data, model=args.model, pretrained="none", img_size=args.img_size, epochs=2,
                      batch_size=args.batch_size, max_train_samples=args.steps * args.batch_size, max_eval_samples=256,
                      device=args.device, amp=args.amp, compile=not args.no_compile, output_dir=args.output_dir,
                      log_every=10**9)
    run = prepare(cfg)
    if synthetic:
        run.train_batches = SyntheticBatches(run.train_batches, args.steps)
    stop = StopRequest()
    try:
        train_one_epoch(run, 0, 0, EpochProgress.zeros(run.device), stop)  # warm-up, compilation
        synchronize(run.device)
        return train_one_epoch(run, 1, 0, EpochProgress.zeros(run.device), stop)["train_img_per_s"]
    finally:
        stop.restore()


def seed(args) -> float:
    import vit

    device = torch.device(args.device)
    model = vit.create_model(args.model, num_classes=10, img_size=args.img_size).to(device)
    loader = seed_loader(Path(args.data) / "train", args.img_size, args.batch_size, args.workers)
    seed_train_steps(model, loader, device, 2)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    seed_train_steps(model, loader, device, args.steps)
    synchronize(device)
    return args.steps * args.batch_size / (time.perf_counter() - start)


ATTENTION = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def attention_kernel(name: str):
    """A context in which scaled_dot_product_attention uses only kernel `name` ("auto": PyTorch's choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, ATTENTION[name])])


def set_inductor(setting: str) -> None:
    """"triton.cudagraphs=True" -> torch._inductor.config.triton.cudagraphs = True."""
    import torch._inductor.config

    key, _, value = setting.partition("=")
    *parents, last = key.split(".")
    target = torch._inductor.config
    for part in parents:
        target = getattr(target, part, None)
    if target is None or not hasattr(target, last) or not value:
        raise ValueError(f"--inductor {setting}: not KEY=VALUE with KEY a torch._inductor.config setting")
    try:
        setattr(target, last, ast.literal_eval(value))
    except (ValueError, SyntaxError):
        raise ValueError(f"--inductor {setting}: {value} is not a Python literal (True, 3, 'name')") from None


def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.train", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ImageFolder root with train/ and test/")
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per side")
    parser.add_argument("--device", default=pick_device("auto").type, type=device_name)
    parser.add_argument("--amp", default=None, help="bf16, fp16, none (default: bf16 on GPU)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--workers", type=int, default=8, help="seed DataLoader workers")
    parser.add_argument("--compare", nargs="*", default=["seed", "synthetic"], choices=["seed", "synthetic"])
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak (H100 measured: ~790)")
    parser.add_argument("--output-dir", default="runs/benchmark")
    parser.add_argument("--attention", choices=["auto", *ATTENTION], default="auto",
                        help="scaled_dot_product_attention's kernel (default: auto, PyTorch's choice)")
    parser.add_argument("--inductor", nargs="*", default=[], metavar="KEY=VALUE",
                        help="torch._inductor.config settings, e.g. triton.cudagraphs=True or max_autotune=True")
    args = parser.parse_args(argv)
    for setting in args.inductor:
        try:
            set_inductor(setting)
        except ValueError as error:
            parser.error(str(error))

    flops_per_image = 3 * model_config(args.model, img_size=args.img_size).forward_macs * 2
    settings = ([f"attention {args.attention}"] if args.attention != "auto" else []) + args.inductor
    print(f"{args.model} @ {args.img_size}px, batch {args.batch_size}, {args.steps} steps"
          f"{''.join(', ' + s for s in settings)}, on {machine(torch.device(args.device))}")
    with attention_kernel(args.attention):
        rates = {"ours": ours(args, synthetic=False)}
        if "synthetic" in args.compare:
            rates["synthetic"] = ours(args, synthetic=True)
    if "seed" in args.compare:
        rates["seed"] = seed(args)
    for name, rate in rates.items():
        mfu = rate * flops_per_image / (args.peak_tflops * 1e12)
        print(f"{name:>10}: {rate:9.1f} img/s   MFU {mfu:6.1%}")
    if "synthetic" in rates:
        print(f"real / synthetic data: {rates['ours'] / rates['synthetic']:.3f}  (target >= 0.95)")
    if "seed" in rates:
        print(f"ours / seed loop:      {rates['ours'] / rates['seed']:.2f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
