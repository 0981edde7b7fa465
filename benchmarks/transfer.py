"""A transfer experiment that fits a 2-core CPU: what each fine-tuning recipe and probe does.

    python -m benchmarks.transfer --data ../shared/data/cifar10-jpg          # ~27 min on 2 CPU cores
    python -m benchmarks.transfer --data ../shared/data/cifar10-jpg --quick  # ~1 min: the plumbing only

Real pretrained weights cannot be had here, so the experiment makes its own: a small ViT is
trained from scratch on five CIFAR-10 classes (airplane, automobile, bird, cat, deer: the upstream
task), and its backbone (the head left behind) is then carried to the other five (dog, frog,
horse, ship, truck: the downstream task), where each way of using it is compared, two seeds each:

    from scratch        the downstream task alone, from random weights
    fine-tune           from the upstream backbone, with a fresh head
    + layer decay       the lower blocks learn slower (--layer-decay)
    + drop path         and stochastic depth (--drop-path)
    + EMA               and the moving average of the weights is what is evaluated (--ema)
    linear probe, kNN   the frozen upstream backbone's features (--probe)

What it tells: whether each recipe moves accuracy in a transfer setting with little downstream
data, and by how much against the spread of two seeds. What it does not: the upstream model saw
12,500 small images for a few minutes, not ImageNet for days; a backbone this weak gains more from fine-tuning and less from
frozen features than DINOv2 or CLIP do, and recipes tuned for long ImageNet-scale fine-tunes
(layer decay 0.65, drop path 0.1-0.2) may do little in a few epochs of a tiny model.
"""

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from safetensors.torch import save_file

from train import TrainConfig
from train.datasets import list_image_folder
from train.loop import train
from train.probe import probe
from vit.checkpoint import safe_load

UPSTREAM = ("airplane", "automobile", "bird", "cat", "deer")
DOWNSTREAM = ("dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Setup:
    """Every knob of the experiment in one place (--quick shrinks the data and the epochs)."""

    model: str = "vit_tiny_patch16_224"
    img_size: int = 64  # CIFAR's 32 px upscaled: a 4 x 4 patch grid
    upstream_per_class: int = 2500  # 12,500 upstream training images
    downstream_per_class: int = 500  # 2,500 downstream: transfer with little data, where pretraining matters
    test_per_class: int = 300  # 1,500 test images per task: one image is 0.07 points
    upstream_epochs: int = 6
    downstream_epochs: int = 6
    batch_size: int = 64
    lr_scratch: float = 1e-3  # from random weights
    lr_finetune: float = 5e-4  # from the upstream backbone
    layer_decay: float = 0.75
    drop_path: float = 0.1
    ema: float = 0.98  # ~50 steps of averaging: a downstream run is 234 steps
    seeds: tuple[int, ...] = (0, 1)


QUICK = dict(upstream_per_class=100, downstream_per_class=100, test_per_class=20, upstream_epochs=2, downstream_epochs=1)


@dataclass
class Variant:
    """One way to use (or not) the upstream backbone downstream: extra flags over the fine-tune."""

    name: str
    pretrained: bool  # start from the upstream backbone
    flags: dict = field(default_factory=dict)
    probe: str | None = None


def variants(setup: Setup) -> list[Variant]:
    ld, dp = dict(layer_decay=setup.layer_decay), dict(layer_decay=setup.layer_decay, drop_path=setup.drop_path)
    return [Variant("from scratch", False), Variant("fine-tune", True), Variant("+ layer decay", True, ld),
            Variant("+ drop path", True, dp), Variant("+ EMA", True, {**dp, "ema": setup.ema}),
            Variant("linear probe", True, probe="linear"), Variant("kNN", True, probe="knn")]


def subset(data: Path, classes: tuple[str, ...], root: Path, per_class: int, test_per_class: int) -> Path:
    """An ImageFolder of `classes` (symlinks into the data): the first N training and M test images."""
    for split, count in (("train", per_class), ("test", test_per_class)):
        names, files, labels = list_image_folder(data / split)
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            chosen = [f for f, label in zip(files, labels) if names[label] == name][:count]
            for file in chosen:
                link = folder / file.name
                if not link.exists():
                    link.symlink_to(file.resolve())
    return root


def config(setup: Setup, data: Path, out: Path, cache: Path, seed: int, lr: float, epochs: int, pretrained: str,
           **flags) -> TrainConfig:
    return TrainConfig(data=str(data), model=setup.model, pretrained=pretrained, img_size=setup.img_size,
                       epochs=epochs, batch_size=setup.batch_size, lr=lr, seed=seed, device="cpu",
                       output_dir=str(out), cache_dir=str(cache), **flags)


def backbone_file(checkpoint: Path, out: Path) -> Path:
    """The upstream model without its head, in our layout: what the downstream runs start from."""
    tensors = {k: v.contiguous() for k, v in safe_load(checkpoint)["state_dict"].items() if not k.startswith("head.")}
    save_file(tensors, str(out))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a CIFAR-10 ImageFolder root (train/ and test/)")
    parser.add_argument("--out", default="runs/transfer", help="where runs and results.json go (default: runs/transfer)")
    parser.add_argument("--quick", action="store_true", help="a few images and epochs: checks the plumbing only")
    args = parser.parse_args(argv)
    setup = Setup(**QUICK) if args.quick else Setup()
    out, started = Path(args.out), time.perf_counter()
    cache = out / "cache"
    upstream = subset(Path(args.data), UPSTREAM, out / "data-upstream", setup.upstream_per_class, setup.test_per_class)
    downstream = subset(Path(args.data), DOWNSTREAM, out / "data-downstream", setup.downstream_per_class,
                        setup.test_per_class)

    print(f"upstream: {setup.model} @ {setup.img_size}px from scratch on {', '.join(UPSTREAM)}", flush=True)
    up = train(config(setup, upstream, out / "upstream", cache, 0, setup.lr_scratch, setup.upstream_epochs, "none"))
    backbone = backbone_file(out / "upstream" / "vit_data-upstream_finetuned.pth", out / "upstream-backbone.safetensors")
    results = {"setup": setup.__dict__, "upstream_test_acc": up["test_acc"], "variants": {}}
    for variant in variants(setup):
        accuracies = []
        for seed in setup.seeds:
            run_dir = out / f"{variant.name.replace(' ', '_').replace('+_', 'plus_')}-seed{seed}"
            weights = str(backbone) if variant.pretrained else "none"
            lr = setup.lr_finetune if variant.pretrained else setup.lr_scratch
            cfg = config(setup, downstream, run_dir, cache, seed, lr, setup.downstream_epochs, weights, **variant.flags)
            if variant.probe:
                accuracies.append(probe(replace(cfg, probe=variant.probe))["top1"])
            else:
                final = train(cfg)
                metrics = safe_load(run_dir / "vit_data-downstream_finetuned_ema.pth")["metrics"] if "ema" in variant.flags \
                    else final
                accuracies.append(metrics["test_acc"])
            print(f"{variant.name}, seed {seed}: {accuracies[-1]:.2%}", flush=True)
        results["variants"][variant.name] = accuracies
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))

    print(f"\nupstream ({', '.join(UPSTREAM)}): {up['test_acc']:.2%} test accuracy")
    print(f"downstream ({', '.join(DOWNSTREAM)}), {len(setup.seeds)} seeds, {results['seconds'] / 60:.1f} min in all:")
    print("| variant | " + " | ".join(f"seed {s}" for s in setup.seeds) + " | mean | spread |")
    print("| --- |" + " --- |" * (len(setup.seeds) + 2))
    for name, accuracies in results["variants"].items():
        spread = max(accuracies) - min(accuracies)
        print(f"| {name} | " + " | ".join(f"{a:.2%}" for a in accuracies)
              + f" | {statistics.mean(accuracies):.2%} | {spread:.2%} |")


if __name__ == "__main__":
    main()
