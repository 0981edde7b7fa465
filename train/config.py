"""Every setting of a training run (fine-tuning, or MAE pretraining with --objective mae), in one visible place: its default, its flag's help, and
whether a resumed run must keep it. `python -m train` makes one flag per field from this table."""

import os
from dataclasses import dataclass, field, fields

from vit.checkpoint import AMP_DTYPES
from vit.mae import DECODERS


def setting(default, help: str, *, must_match: bool = False, positive: bool = False, kind=None, choices=None):
    """A TrainConfig field. help: what `--flag` means and what its default does (the help text);
    must_match: a run resumed from last.pt must have the same value (it changes the trajectory);
    positive: an int >= 1; kind: the flag's type where the default (None) does not say it;
    choices: the values the flag takes, if only a few."""
    return field(default=default, metadata=dict(help=help, must_match=must_match, positive=positive, kind=kind,
                                                 choices=choices))


@dataclass
class TrainConfig:
    # What to train on, and from where
    data: str = setting("cifar10", "'cifar10' (downloaded into --data-root), an ImageFolder root with train/ and test/ "
                        "(or val/), or an extracted cifar-10-batches-py folder (default: cifar10)", must_match=True)
    data_root: str = setting("data", "where --data cifar10 is downloaded to (default: data)")
    model: str = setting("vit_base_patch16_224", "a timm model name, optionally with a weights tag (name.tag); "
                         "python -m vit lists them (default: vit_base_patch16_224)", must_match=True)
    pretrained: str = setting("default", "'default' (timm's ImageNet weights for --model, from the Hugging Face hub or "
                              "its cache), a hub id, a local checkpoint in any layout python -m weights inspect reads, "
                              "or 'none' for random weights (default: default)")
    patch_size: int | None = setting(None, "with --pretrained none: the patch side of the model to build (e.g. 4 for "
                                     "32 px images); the saved model records it (default: the name's)",
                                     must_match=True, positive=True, kind=int)
    img_size: int = setting(224, "side of the model's input in pixels, a multiple of the patch size; CIFAR-10's 32 px "
                            "images are resized to it on the device (default: 224)", must_match=True, positive=True)
    # What it learns (train/objectives.py)
    objective: str = setting("classify", "classify (fine-tune on the labels) or mae (pretrain on the images alone as a "
                             "masked autoencoder, vit/mae.py; labels are not needed) (default: classify)",
                             must_match=True, choices=("classify", "mae"))
    mask_ratio: float = setting(0.75, "with --objective mae: the share of each image's patches hidden from the "
                                "encoder (default: 0.75, the paper's)", must_match=True)
    decoder: str = setting("paper", "with --objective mae: the decoder's size, vit/mae.py's DECODERS: paper (512 wide, "
                           "8 blocks, for ViT-B and up), small (256, 4: ViT-S/Ti), tiny (128, 2: 32 px images), cifar (192, 4: "
                           "IcarusWizard/MAE's CIFAR-10 ViT-Ti) (default: paper)", must_match=True, choices=tuple(DECODERS))
    mae_target: str = setting("normalised", "with --objective mae: what the decoder predicts for a hidden patch: "
                              "normalised (its pixels minus their mean, over their std: the paper's best) or pixels "
                              "(default: normalised)", must_match=True, choices=("normalised", "pixels"))
    # Optimisation: AdamW (train/optim.py), linear warmup then cosine decay to 0, label smoothing, clipping
    epochs: int = setting(3, "passes over the training set (default: 3)", must_match=True, positive=True)
    batch_size: int = setting(128, "images per step (default: 128)", must_match=True, positive=True)
    lr: float = setting(1e-4, "peak learning rate of AdamW (default: 1e-4)", must_match=True)
    weight_decay: float = setting(0.05, "AdamW weight decay, not applied to norms, biases, layer scales, learned tokens "
                                  "and positions (default: 0.05)", must_match=True)
    layer_decay: float | None = setting(None, "layer-wise learning-rate decay: block i learns at lr * LAYER_DECAY ** "
                                        "(depth - i), the head at lr (BEiT, MAE, EVA, DINOv2 fine-tune with 0.65-0.9) "
                                        "(default: off, every layer at lr)", must_match=True, kind=float)
    drop_path: float = setting(0.0, "stochastic depth: the last block's residual branches are skipped for this "
                               "fraction of the samples in training, earlier blocks' less, linearly (default: 0)",
                               must_match=True)
    ema: float | None = setting(None, "keep an exponential moving average of the weights with this decay (e.g. 0.999), "
                                "evaluated beside them every epoch and saved as its own fine-tuned checkpoint "
                                "(default: off)", must_match=True, kind=float)
    warmup_fraction: float = setting(0.05, "fraction of all steps spent warming the learning rate up from 0 "
                                     "(default: 0.05)", must_match=True)
    label_smoothing: float = setting(0.1, "cross-entropy label smoothing (default: 0.1)", must_match=True)
    grad_clip: float = setting(1.0, "clip the gradients' global norm to this (default: 1.0)", must_match=True)
    crop_padding: int = setting(4, "random-crop padding in pixels for small images (default: 4)", must_match=True)
    # Giants: memory per device (train/memory.py prints the plan before any data is decoded)
    fsdp: bool = setting(False, "under torchrun, shard the weights, gradients and AdamW state over the processes with "
                         "PyTorch's FSDP2 (fully_shard, each block a unit) instead of DDP's whole copy per process; "
                         "the saved files are a one-process run's (default: off)")
    grad_checkpointing: bool = setting(False, "keep only each block's input in the forward pass and recompute the "
                                       "rest in backward: activations shrink ~depth times for ~1/3 more compute "
                                       "(default: off)")
    lora: int | None = setting(None, "train rank-LORA low-rank adapters on the frozen model (and the new head) instead "
                               "of every weight; the saved model has them merged in, a plain ViT (default: off, full "
                               "fine-tuning)", must_match=True, positive=True, kind=int)
    lora_alpha: float | None = setting(None, "the adapters' update is scaled by LORA_ALPHA / LORA (default: LORA, "
                                       "scale 1)", must_match=True, kind=float)
    lora_targets: str = setting("qkv", "which projections get adapters, comma-separated: q, k, v (rows of the fused "
                                "qkv), qkv (all three), out (attention output), fc1, fc2, mlp (both) (default: qkv)",
                                must_match=True)
    # Frozen-feature evaluation instead of fine-tuning (train/probe.py)
    probe: str | None = setting(None, "evaluate the frozen backbone instead of fine-tuning it: knn (DINO's weighted "
                                "k-NN on its features) or linear (a linear classifier on them, saved as a checkpoint "
                                "infer reads) (default: off, fine-tune)", choices=("knn", "linear"))
    knn_k: int = setting(20, "neighbours that vote in --probe knn (default: 20, DINO's)", positive=True)
    # Hardware
    device: str = setting("auto", "auto (a GPU if there is one, else the CPU), cpu, cuda or cuda:N (default: auto)")
    amp: str | None = setting(None, "autocast precision: bf16, fp16 or none (default: bf16 on a GPU, none (fp32) on CPU)",
                              must_match=True, choices=tuple(AMP_DTYPES))
    compile: bool | None = setting(None, "torch.compile the model (default: on for a GPU, off on CPU)")
    eval_batch_size: int | None = setting(None, "images per evaluation batch (default: twice --batch-size)", positive=True)
    num_workers: int = setting(min(16, os.cpu_count() or 1), "processes decoding images (and DataLoader workers for "
                               "large images) (default: one per CPU core, at most 16)")
    # Bookkeeping
    output_dir: str = setting("runs/cifar10", "where the model, last.pt, metrics.jsonl and plots go "
                              "(default: runs/cifar10)")
    name: str | None = setting(None, "data set name in vit_<name>_finetuned.pth (default: from --data, 'cifar10' for "
                               "any CIFAR-10 copy)")
    seed: int = setting(0, "seed for initialisation, data order and augmentation (default: 0)", must_match=True)
    max_train_samples: int | None = setting(None, "train on a seeded random subset of this many images (default: all)",
                                            must_match=True, positive=True)
    max_eval_samples: int | None = setting(None, "evaluate on a seeded random subset of this many images (default: all)",
                                           positive=True)
    resume: str | None = setting(None, "a last.pt to continue from, with the flags of the run that wrote it "
                                 "(default: start afresh)")
    cache_dir: str | None = setting(None, "where decoded small images are cached (default: $XDG_CACHE_HOME/"
                                    "vit-from-scratch, else ~/.cache/vit-from-scratch)")
    skip_bad_images: bool = setting(False, "skip unreadable training images (default: stop and list them)")
    log_every: int = setting(25, "steps between progress-bar updates, at least two an epoch; each one waits for "
                             "the GPU (default: 25)",
                             positive=True)

    def architecture_overrides(self) -> dict:
        """ViTConfig fields the flags change from the name's (vit.create_model's overrides)."""
        return {"patch_size": self.patch_size} if self.patch_size else {}


# The settings a resumed run must share with the run that wrote its last.pt.
RESUME_MUST_MATCH = tuple(f.name for f in fields(TrainConfig) if f.metadata["must_match"])
