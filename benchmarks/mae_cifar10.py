"""MAE pretraining on CIFAR-10 at CPU scale, against a random encoder (benchmarks/README.md,
"MAE on CIFAR-10, on 2 CPU cores"): each step below is the project's own command, run in turn.

    1. pretrain   python -m train --objective mae: ViT-Ti, 32 px at patch 4, the tiny decoder,
                  on the 50,000 training images (labels unused), EPOCHS epochs
    2. probes     python -m train --probe knn / linear, of the pretrained encoder and of a random
                  one of the same shape (--pretrained none --patch-size 4)
    3. fine-tune  python -m train from each, with the same fine-tuning budget

    python -m benchmarks.mae_cifar10 --data ../shared/data/cifar10-jpg --out runs/mae-cifar10

Prints one markdown table (and writes results.json in --out); every figure comes from the
commands' own metrics.jsonl.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ENCODER = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--device", "cpu"]
PRETRAIN = ["--objective", "mae", "--pretrained", "none", "--patch-size", "4", "--decoder", "tiny", "--batch-size",
            "256", "--lr", "1.5e-3", "--amp", "bf16", "--max-eval-samples", "2000"]  # (the held-out images: test's)
FINE_TUNE = ["--epochs", "2", "--batch-size", "128", "--lr", "1e-3", "--amp", "bf16", "--max-train-samples", "10000",
             "--max-eval-samples", "2000"]


def run(args: list[str], out: Path) -> tuple[list[dict], float]:
    """`python -m train ARGS --output-dir out`: its metrics.jsonl records and its wall time."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "train", *args, "--output-dir", str(out)], text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode:
        sys.exit(f"python -m train {' '.join(args)} failed: {result.stderr[-1000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], time.perf_counter() - started


def random_autoencoders_loss(data: str, out: Path) -> float:
    """The held-out masked-patch loss of the same autoencoder untrained (its initialisation, seed
    0), on the pretraining run's held-out images under the same masks."""
    import torch

    from train.batches import make_batches
    from train.config import TrainConfig
    from train.datasets import load_dataset
    from train.objectives import OBJECTIVES, masked_loss

    cfg = TrainConfig(data=data, objective="mae", model="vit_tiny_patch16_224", pretrained="none", patch_size=4,
                      img_size=32, decoder="tiny", batch_size=256, max_eval_samples=2000, cache_dir=str(out / "cache"))
    torch.manual_seed(cfg.seed)
    model = OBJECTIVES["mae"].build(cfg, 0, "none").eval()
    encoder = model.encoder.pretrained_cfg
    test = make_batches(load_dataset(cfg).test, cfg, torch.device("cpu"), encoder["mean"], encoder["std"], train=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return masked_loss(model, test, cfg, torch.bfloat16, is_main=False)["test_loss"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mae_cifar10", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 as an ImageFolder with train/ and test/")
    parser.add_argument("--out", required=True, help="a fresh folder for the runs")
    parser.add_argument("--epochs", type=int, default=7, help="pretraining epochs (default: 7, about 30 min on 2 cores)")
    args = parser.parse_args(argv)
    out, data = Path(args.out), ["--data", args.data, "--cache-dir", str(Path(args.out) / "cache")]
    results = {}
    records, seconds = run([*data, *ENCODER, *PRETRAIN, "--epochs", str(args.epochs)], out / "pretrain")
    epochs = [r for r in records if r["kind"] == "epoch"]
    results["pretrain"] = {"seconds": seconds, "epochs": args.epochs, "held_out_loss": [r["test_loss"] for r in epochs],
                           "trivial_loss": epochs[-1]["test_loss_trivial"]}
    results["pretrain"]["random_loss"] = random_autoencoders_loss(args.data, out)
    pretrained = str(next((out / "pretrain").glob("vit_*_mae.pth")))
    for name, weights in (("mae", ["--pretrained", pretrained]), ("random", ["--pretrained", "none", "--patch-size", "4"])):
        for method in ("knn", "linear"):
            records, seconds = run([*data, *ENCODER, *weights, "--probe", method], out / f"probe-{name}")
            results[f"{method}_{name}"] = records[-1]["top1"]
        records, seconds = run([*data, *ENCODER, *weights, *FINE_TUNE], out / f"finetune-{name}")
        results[f"finetune_{name}"] = {"test_acc": [r["test_acc"] for r in records if r["kind"] == "epoch"],
                                       "seconds": seconds}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    pre = results["pretrain"]
    print(f"pretraining: {pre['epochs']} epochs in {pre['seconds'] / 60:.1f} min; held-out masked-patch loss "
          f"{' -> '.join(f'{x:.4f}' for x in pre['held_out_loss'])} (predicting zero: {pre['trivial_loss']:.4f}; "
          f"the untrained autoencoder: {pre['random_loss']:.4f})\n")
    print("| encoder | k-NN top-1 | linear probe top-1 | fine-tuned top-1 (per epoch) |")
    print("| --- | --- | --- | --- |")
    for name in ("mae", "random"):
        tuned = results[f"finetune_{name}"]["test_acc"]
        print(f"| {'MAE-pretrained' if name == 'mae' else 'random'} | {results[f'knn_{name}']:.2%} | "
              f"{results[f'linear_{name}']:.2%} | {' -> '.join(f'{x:.2%}' for x in tuned)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
