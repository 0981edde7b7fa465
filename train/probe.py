"""Frozen-feature evaluation: how good a backbone's features are, before any fine-tuning.

    python -m train --probe knn    --model vit_small_patch14_dinov2 --data ../shared/data/cifar10-jpg --img-size 224
    python -m train --probe linear --model vit_small_patch14_dinov2 --data ../shared/data/cifar10-jpg --img-size 224

DINOv2, CLIP and SigLIP are judged first this way (DINOv2's paper, Table 8: a CIFAR-10 linear probe
of 97.7 / 98.7 / 99.3 % for ViT-S / B / L). The backbone is frozen: each image's feature is the
model's pooled output (`vit.create_model(name, num_classes=0)`: the CLS token after the final norm,
or the average or attention pool, as the model pools), computed once, in batches, from the images
as `infer` prepares them (the same resize and normalisation, no augmentation), and cached on disk
by model, weights, size and data. Then:

  knn     DINO's weighted k-nearest-neighbour classifier: cosine similarity to every training
          feature, the k most similar vote for their class with weight exp(similarity / T)
          (k = 20, T = 0.07; --knn-k to change k). No training at all.
  linear  a linear classifier (multinomial logistic regression, L-BFGS on the standardised
          features, a little L2): a few seconds even on a CPU. The classifier becomes the model's
          head, saved as a fine-tuned checkpoint (vit_<data>_linear_probe.pth) that `infer` reads.

Both print top-1 on the test split and append {"kind": "probe", "method": ..., "top1": ...} to
--output-dir's metrics.jsonl.
"""

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import vit
from train.batches import make_batches
from train.config import TrainConfig
from train.datasets import default_cache_dir, load_dataset
from train.preflight import check_output_dir, eager, resolve_hardware
from train.state import model_card
from weights.files import atomic_save
from vit.checkpoint import save_model
from vit.checkpoint import AMP_DTYPES
from weights.load import load_weights_only

KNN_TEMPERATURE = 0.07  # DINO's
LINEAR_L2 = 1e-4  # the logistic regression's penalty, on the weights of standardised features
LINEAR_STEPS = 200  # L-BFGS iterations (each a full pass over the cached features)


def knn_top1(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
             classes: int, k: int = 20, temperature: float = KNN_TEMPERATURE) -> float:
    """DINO's weighted kNN: (N, D) training and (M, D) test features -> top-1 accuracy."""
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)  # cosine = dot product
    k = min(k, len(train))
    correct = 0
    for chunk, labels in zip(test.split(1024), test_labels.split(1024)):  # (b, D): the similarity matrix in pieces
        similarity, neighbours = (chunk @ train.T).topk(k, dim=1)  # (b, k) each
        votes = torch.zeros(len(chunk), classes).scatter_add_(1, train_labels[neighbours], (similarity / temperature).exp())
        correct += (votes.argmax(1) == labels).sum().item()
    return correct / len(test)


def fit_linear(train: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.nn.Linear:
    """A linear classifier on the features: logistic regression by L-BFGS on standardised
    features; the standardisation is folded into the returned layer, which reads raw features."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x = (train - mean) / std  # (N, D)
    layer = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(layer.weight), torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=LINEAR_STEPS, history_size=20,
                                  line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = F.cross_entropy(layer(x), labels) + LINEAR_L2 * layer.weight.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():  # w . (f - mean) / std + b  ==  (w / std) . f + (b - (w / std) . mean)
        weight = layer.weight / std
        folded = torch.nn.Linear(x.shape[1], classes)
        folded.weight.copy_(weight)
        folded.bias.copy_(layer.bias - weight @ mean)
    return folded


def cache_key(cfg: TrainConfig, weights: str) -> str:
    """The features depend on the model, its weights, the input size and precision, and the data."""
    weights_id = weights
    if Path(weights).is_file():
        stat = Path(weights).stat()
        weights_id = f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    parts = dict(model=cfg.model, weights=weights_id, img_size=cfg.img_size, amp=cfg.amp, data=str(Path(cfg.data).resolve())
                 if Path(cfg.data).exists() else cfg.data, train=cfg.max_train_samples, test=cfg.max_eval_samples, seed=cfg.seed,
                 **cfg.architecture_overrides())
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def features(model, batches, amp_dtype, desc: str) -> torch.Tensor:
    """The model's pooled output for every image of a split, in order: (N, D) float32 on the CPU."""
    out = []
    for images, _ in tqdm(batches.epoch(0), total=len(batches), desc=desc, leave=False, unit="batch"):
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out.append(model(images).float().cpu())
    return torch.cat(out)


def probe(cfg: TrainConfig) -> dict:
    """Evaluate the frozen backbone of cfg.model by cfg.probe ("knn" or "linear"); returns the
    probe's record (also appended to metrics.jsonl)."""
    device, amp, _ = resolve_hardware(cfg)
    amp_dtype = AMP_DTYPES[amp]
    check_output_dir(cfg.output_dir)
    weights = vit.locate_pretrained(cfg.model, cfg.pretrained)  # fails in seconds, before any decoding
    data = load_dataset(cfg)
    torch.manual_seed(cfg.seed)  # random weights (--pretrained none) are the seed's
    backbone = vit.create_model(cfg.model, num_classes=0, img_size=cfg.img_size, pretrained=weights,
                                **cfg.architecture_overrides()).to(device).eval()
    mean, std = backbone.pretrained_cfg["mean"], backbone.pretrained_cfg["std"]

    cache = Path(cfg.cache_dir or default_cache_dir()) / "features" / f"{cache_key(cfg, weights)}.pt"
    if cache.is_file():
        cached = load_weights_only(cache)
        train_features, test_features = cached["train"], cached["test"]
        source = f"from the cache {cache}"
    else:
        with eager():
            train_features = features(backbone, make_batches(data.train, cfg, device, mean, std, train=False),
                                      amp_dtype, "features: train")
            test_features = features(backbone, make_batches(data.test, cfg, device, mean, std, train=False),
                                     amp_dtype, "features: test")
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"train": train_features, "test": test_features}, cache)
        source = f"computed, cached in {cache}"
    classes = len(data.class_names)
    train_labels, test_labels = data.train.labels, data.test.labels
    record = {"kind": "probe", "method": cfg.probe, "model": cfg.model, "weights": weights, "img_size": cfg.img_size,
              "train_images": len(train_labels), "test_images": len(test_labels), "feature_dim": train_features.shape[1]}
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    if cfg.probe == "knn":
        record.update(k=cfg.knn_k, temperature=KNN_TEMPERATURE,
                      top1=knn_top1(train_features, train_labels, test_features, test_labels, classes, cfg.knn_k))
        how = f"k = {min(cfg.knn_k, len(train_labels))}, T = {KNN_TEMPERATURE}"
    else:
        head = fit_linear(train_features, train_labels, classes)
        with torch.no_grad():
            record["top1"] = (head(test_features).argmax(1) == test_labels).sum().item() / len(test_labels)
        model = vit.VisionTransformer(replace(backbone.cfg, num_classes=classes))
        model.load_state_dict({**backbone.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}})
        model.pretrained_cfg.update(backbone.pretrained_cfg)  # the normalisation the features were made with
        path = Path(cfg.output_dir) / f"vit_{data.name}_linear_probe.pth"
        save_model(path, model, model_card(cfg, data, model, amp), metrics={"test_acc": record["top1"], "probe": "linear"},
                   config=asdict(cfg))
        record["checkpoint"] = str(path)
        how = f"logistic regression, L-BFGS, L2 {LINEAR_L2}"
    with open(Path(cfg.output_dir) / "metrics.jsonl", "a") as file:
        file.write(json.dumps(record) + "\n")
    tqdm.write(f"{cfg.probe} probe of {cfg.model} @ {cfg.img_size}px ({how}): top-1 {record['top1']:.2%} on "
               f"{len(test_labels)} test images, from {len(train_labels)} training images' "
               f"{train_features.shape[1]}-d features ({source})")
    if "checkpoint" in record:
        tqdm.write(f"saved {record['checkpoint']} (the backbone with the probe as its head)\n"
                   f"next: python -m infer --checkpoint {record['checkpoint']} --image IMAGE_OR_FOLDER")
    return record
