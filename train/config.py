"""Every setting of a fine-tuning run, in one visible place."""

import os
from dataclasses import dataclass


@dataclass
class TrainConfig:
    # What to train on, and from where
    data: str = "cifar10"  # "cifar10" (download), an ImageFolder root, or a cifar-10-batches-py folder
    data_root: str = "data"  # where "cifar10" is downloaded to
    model: str = "vit_base_patch16_224"
    pretrained: str = "default"  # timm's ImageNet weights for `model`; a hub id, a path, or "none"
    img_size: int = 224  # CIFAR-10's 32 px images are resized to this on the device
    # Optimisation: AdamW, linear warmup then cosine decay to 0, label smoothing, clipping
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.05  # not on norms, biases, layer scales, learned tokens (CLS, ...), positions
    warmup_fraction: float = 0.05  # of all steps
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    crop_padding: int = 4  # random crop with this padding, plus horizontal flips (small images)
    # Hardware
    device: str = "auto"  # auto, cpu, cuda
    amp: str | None = None  # bf16, fp16, none; None: bf16 on a GPU, none on CPU
    compile: bool | None = None  # torch.compile; None: on for a GPU
    eval_batch_size: int | None = None  # None: 2 x batch_size
    num_workers: int = min(16, os.cpu_count() or 1)  # decoding processes (and DataLoader workers): one per core
    # Bookkeeping
    output_dir: str = "runs/cifar10"
    name: str | None = None  # data set name in vit_<name>_finetuned.pth; None: from --data
    seed: int = 0
    max_train_samples: int | None = None  # a seeded random subset, for quick runs
    max_eval_samples: int | None = None
    resume: str | None = None  # a last.pt to continue from
    cache_dir: str | None = None  # decoded-image cache; None: $XDG_CACHE_HOME or ~/.cache, /vit-from-scratch
    skip_bad_images: bool = False  # skip unreadable training images instead of stopping
    log_every: int = 25  # steps between progress-bar updates (each one waits for the GPU)
