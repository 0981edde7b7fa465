"""What a run learns, one class each; `--objective` picks one:

    classify  Classification: fine-tune on labelled images (cross-entropy), top-1 on the test split
    mae       MaskedAutoencoding: pretrain on images alone the MAE way (vit/mae.py): hide 75% of
              each image's patches, reconstruct them; the held-out masked-patch loss each epoch

train/loop.py asks its objective for the model to train, each step's loss, each epoch's evaluation
and its line. Everything else (data, AdamW and its schedule, AMP, compile, DDP and FSDP, last.pt
and resuming) is one code for both; train/state.py writes each one's final file.
"""

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import vit
from train.lora import add_lora, parse_targets
from vit.mae import DECODERS, MaskedAutoencoder

RECONSTRUCTED_IMAGES = 8  # the held-out images each MAE epoch draws (its first ones, the same every epoch)


def build_encoder(cfg, num_classes: int, pretrained: str) -> vit.VisionTransformer:
    """The ViT that trains: pretrained weights (or random, with --patch-size if given), a head of
    num_classes (0: none)."""
    return vit.create_model(cfg.model, num_classes=num_classes, img_size=cfg.img_size, pretrained=pretrained,
                            drop_path_rate=cfg.drop_path, **cfg.architecture_overrides())


class Classification:
    """Fine-tuning: logits (B, classes), cross-entropy with label smoothing against the labels."""

    name = "classify"
    accuracy = True  # its steps count correct predictions
    betas = (0.9, 0.999)  # AdamW's defaults, as timm's fine-tuning scripts

    def build(self, cfg, num_classes: int, pretrained: str) -> torch.nn.Module:
        model = build_encoder(cfg, num_classes, pretrained)
        if cfg.lora:
            add_lora(model, cfg.lora, cfg.lora_alpha, parse_targets(cfg.lora_targets))
        return model

    def encoder(self, model: torch.nn.Module) -> vit.VisionTransformer:
        return model

    def step(self, forward, images: torch.Tensor, labels: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's (loss, correct predictions), both on the device."""
        logits = forward(images)  # (B, classes)
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
        return loss, (logits.argmax(1) == labels).sum()

    def evaluate(self, run, epoch: int) -> dict:
        """The test split's loss, top-1 and confusion matrix (and the EMA's, as *_ema)."""
        classes = len(run.data.class_names)
        record = evaluate(run.model, run.test_batches, classes, run.amp_dtype, run.is_main)
        if run.ema:
            averaged = evaluate(run.ema.model, run.test_batches, classes, run.amp_dtype, run.is_main, desc="eval EMA")
            record.update({f"{k}_ema": v for k, v in averaged.items() if k != "test_images"})
        return record

    def line(self, record: dict, epochs: int) -> str:
        """`epoch 2/3: train loss ... acc ... | test loss ... acc ... [| EMA acc ...] | img/s, s`."""
        ema = f" | EMA acc {record['test_acc_ema']:.2%}" if "test_acc_ema" in record else ""
        return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%} | "
                f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}{ema} | "
                f"{record['train_img_per_s']:.0f} img/s, {record['train_seconds']:.1f} s")


class MaskedAutoencoding:
    """MAE pretraining (He et al. 2021): the encoder (--model) sees a random quarter of each
    image's patches, a narrow decoder (--decoder) predicts the rest; the loss is the mean squared
    error on the hidden patches (of each patch's normalised pixels with --mae-target normalised, the
    paper's best). Labels, where the data has them, are not used."""

    name = "mae"
    accuracy = False
    betas = (0.9, 0.95)  # the paper's AdamW (He et al. 2021, Table 8)

    def build(self, cfg, num_classes: int, pretrained: str) -> torch.nn.Module:
        decoder = replace(DECODERS[cfg.decoder], norm_pix_loss=cfg.mae_target == "normalised")
        return MaskedAutoencoder(build_encoder(cfg, 0, pretrained), decoder)

    def encoder(self, model: MaskedAutoencoder) -> vit.VisionTransformer:
        return model.encoder

    def step(self, forward, images: torch.Tensor, labels: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
        loss, _, _ = forward(images, mask_ratio=cfg.mask_ratio)  # a fresh mask per image, from the run's generator
        return loss, torch.zeros((), dtype=torch.long, device=images.device)

    def evaluate(self, run, epoch: int) -> dict:
        """The held-out images' masked-patch loss, each image under the same mask every epoch (so
        epochs compare), beside the trivial predictor's (zero: the mean of the target, 1.0 for
        normalised pixels), and the reconstructions of the first RECONSTRUCTED_IMAGES as a picture."""
        record = masked_loss(run.model, run.test_batches, run.cfg, run.amp_dtype, run.is_main)
        record["reconstruction"] = str(draw_reconstructions(run, epoch))
        return record

    def line(self, record: dict, epochs: int) -> str:
        """`epoch 2/3: train loss ... | held-out masked-patch loss ... (predicting zero: ...) | img/s, s`."""
        return (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f} | held-out masked-patch loss "
                f"{record['test_loss']:.4f} (predicting zero: {record['test_loss_trivial']:.4f}) | "
                f"{record['train_img_per_s']:.0f} img/s, {record['train_seconds']:.1f} s")


OBJECTIVES = {objective.name: objective for objective in (Classification(), MaskedAutoencoding())}



# ---------------------------------------------------------------- evaluations


@torch.no_grad()
def evaluate(model, batches, num_classes: int, amp_dtype, is_main: bool = True, desc: str = "eval") -> dict:
    """Loss, top-1 accuracy and confusion matrix (rows: true class) over a whole split."""
    loss_sum = torch.zeros((), device=batches.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=batches.device)
    count = 0
    for images, labels in tqdm(batches.epoch(0), total=len(batches), desc=desc, leave=False, disable=not is_main):
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        cells = labels * num_classes + logits.argmax(1)  # (true, predicted) pairs as flat indices
        confusion.scatter_add_(0, cells, torch.ones_like(cells))  # unlike bincount, never syncs
        count += len(labels)
    confusion = confusion.view(num_classes, num_classes).cpu()
    return {"test_loss": loss_sum.item() / max(1, count), "test_acc": confusion.trace().item() / max(1, count),
            "test_images": count, "confusion": confusion.tolist()}


def held_out_noise(batches, num_patches: int, seed: int):
    """Each held-out batch's masking noise (B, N), the same for every epoch and every model."""
    generator = torch.Generator().manual_seed(seed)
    for images, _ in batches.epoch(0):
        yield images, torch.rand(len(images), num_patches, generator=generator).to(images.device)


@torch.no_grad()
def masked_loss(model: MaskedAutoencoder, batches, cfg, amp_dtype, is_main: bool = True, desc: str = "eval") -> dict:
    """The mean squared error on the hidden patches of a whole split, and the trivial predictor's
    (every prediction 0), both per hidden patch and pixel value."""
    loss_sum, trivial_sum = torch.zeros((), device=batches.device), torch.zeros((), device=batches.device)
    count = 0
    for images, noise in tqdm(held_out_noise(batches, model.encoder.cfg.num_patches, cfg.seed), total=len(batches),
                              desc=desc, leave=False, disable=not is_main):
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _, mask = model(images, noise=noise, mask_ratio=cfg.mask_ratio)
        target = model.target(images.float(), model.encoder.cfg.patch_size)  # (B, N, P*P*3)
        trivial = (target**2).mean(dim=-1)  # (B, N): predicting zero
        loss_sum += loss.float() * len(images)  # (each image hides as many patches: the batch mean weighs alike)
        trivial_sum += (trivial * mask).sum() / mask.sum() * len(images)
        count += len(images)
    return {"test_loss": loss_sum.item() / max(1, count), "test_loss_trivial": trivial_sum.item() / max(1, count),
            "test_images": count}


def draw_reconstructions(run, epoch: int) -> Path:
    """MAE's Figure 2 for the first held-out images, under their evaluation mask, as
    reconstructions/epoch_<n>.png in the output folder (every rank reconstructs: under FSDP each
    holds a shard of the model; rank 0 draws)."""
    from infer.figures import save_mae_figure

    images, noise = next(held_out_noise(run.test_batches, run.model.encoder.cfg.num_patches, run.cfg.seed))
    with torch.autocast(images.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        pictures = run.model.reconstruct(images[:RECONSTRUCTED_IMAGES], noise[:RECONSTRUCTED_IMAGES], run.cfg.mask_ratio)
    path = Path(run.cfg.output_dir) / "reconstructions" / f"epoch_{epoch + 1:03d}.png"
    if run.is_main:
        encoder = run.model.encoder
        save_mae_figure(pictures, encoder.pretrained_cfg["mean"], encoder.pretrained_cfg["std"], path, run.cfg.mask_ratio)
    return path
