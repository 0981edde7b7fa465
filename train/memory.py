"""The memory plan: what a training step will hold on each device, printed before any data is
decoded, and what to change when it will not fit.

At its peak a step of AdamW holds four things (per device; bytes for fp32 master weights):

    weights        4 per parameter                          (FSDP: a 1/N shard, plus the blocks
                                                              gathered whole for the moment)
    gradients      4 per trainable parameter                (LoRA: only the adapters and head)
    optimiser      8 per trainable parameter: AdamW's two moments
    activations    what autograd keeps for backward: per block, the inputs its operations need
                   again (the LayerNorms', the linears', GELU's, attention's q, k, v and output),
                   about 16 (B, T, D) fp32 tensors in a plain ViT block. Under autocast the
                   block also keeps the low-precision copies of its weights.

Activations are not counted by formula, because they depend on everything (the MLP's kind, the
attention kernel the device picks, autocast, which weights are frozen): one block of the model
runs forward on the device at batch 1 and 2, and a `saved_tensors_hooks` sees every tensor
autograd keeps. Twice (batch 2 - batch 1) gives what an image adds, and the rest is fixed. With
--grad-checkpointing a block keeps only its input, and one block at a time is recomputed whole.

The four do not all peak at once: a step's forward ends holding weights, optimiser state and all
activations; then backward frees activations as it makes gradients; then AdamW's update makes a
temporary copy the size of the gradients. So the plan is weights + optimiser + the larger of
(activations + the gradients made before backward frees much) and (gradients + that copy).
benchmarks/memory.py checks it against measured peaks.
"""

from dataclasses import dataclass, replace

import torch

import vit
from train.config import TrainConfig
from train.lora import add_lora, parse_targets
from vit.checkpoint import AMP_DTYPES
from vit.config import ViTConfig

GB = 1024**3


@dataclass(frozen=True)
class TrainingShape:
    """What the plan depends on besides the model: the options that change memory."""

    batch_size: int  # images per step on one device
    amp_dtype: torch.dtype | None = None  # autocast's dtype, None for fp32
    lora_rank: int | None = None
    lora_targets: tuple[str, ...] = ("q", "k", "v")
    grad_checkpointing: bool = False
    shards: int = 1  # FSDP: the devices the weights, gradients and optimiser state are split over

    @classmethod
    def of(cls, cfg: TrainConfig, amp: str, world_size: int) -> "TrainingShape":
        """The options of a run's settings that change a step's memory."""
        return cls(batch_size=cfg.batch_size, amp_dtype=AMP_DTYPES[amp], lora_rank=cfg.lora,
                   lora_targets=parse_targets(cfg.lora_targets), grad_checkpointing=cfg.grad_checkpointing,
                   shards=world_size if cfg.fsdp else 1)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device at the peak of a training step (the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    free: int | None  # what the device has free now, where known

    @property
    def total(self) -> int:
        update_copy = self.gradients  # AdamW's temporary while it steps: the size of the (sharded) gradients
        return self.weights + self.optimizer + max(self.activations + self.gradients // 4, self.gradients + update_copy)

    @property
    def fits(self) -> bool:
        return self.free is None or self.total <= self.free

    def line(self, where: str) -> str:
        free = f" of {size(self.free)} free" if self.free is not None else ""
        return (f"memory plan per {where}: weights {size(self.weights)}, gradients {size(self.gradients)}, AdamW state "
                f"{size(self.optimizer)}, activations {size(self.activations)} -> peak about {size(self.total)}{free}")


def size(n: int) -> str:
    """Bytes as GB (or MB, below 1 GB)."""
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / 1024**2:.0f} MB"


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: the GPU's (cudaMemGetInfo), or the host's MemAvailable for a CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as file:
            fields = dict(line.split(":", 1) for line in file)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def build_for_plan(model_cfg: ViTConfig, shape: TrainingShape, device="meta") -> vit.VisionTransformer:
    """The model as it will train (adapters added, frozen where LoRA freezes), on `device`."""
    with torch.device(device), torch.random.fork_rng(devices=[]):
        model = vit.VisionTransformer(model_cfg)
        if shape.lora_rank:
            add_lora(model, shape.lora_rank, targets=shape.lora_targets)
    return model


def saved_bytes(module: torch.nn.Module, tokens: torch.Tensor, amp_dtype) -> int:
    """Bytes of the tensors autograd keeps for backward in module(tokens), the parameters
    themselves not counted (they are there anyway); views of one storage counted once."""
    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(tokens.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            module(tokens)
    return sum(kept.values())


def block_activations(model_cfg: ViTConfig, shape: TrainingShape, device: torch.device) -> tuple[int, int]:
    """(fixed bytes, bytes per image) that one block keeps for backward, measured on `device`
    at batch 1 and 2 (the module docstring). A rotary model's block runs without its rotation
    here: what the rotation keeps is a few per cent more."""
    block = build_for_plan(replace(model_cfg, depth=1), shape, device).blocks[0].train()
    sizes = [saved_bytes(block, torch.zeros(b, model_cfg.num_tokens, model_cfg.embed_dim, device=device,
                                            requires_grad=True), shape.amp_dtype) for b in (1, 2)]
    per_image = sizes[1] - sizes[0]
    return max(0, sizes[0] - per_image), per_image


def plan_memory(model_cfg: ViTConfig, shape: TrainingShape, device: torch.device) -> MemoryPlan:
    """The plan for training `model_cfg` as `shape` says on `device` (one of `shards` devices)."""
    model = build_for_plan(model_cfg, shape)  # on the meta device: counted, not allocated
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    block = sum(p.numel() for p in model.blocks[0].parameters())
    n = shape.shards
    weights = 4 * total // n
    if n > 1:  # FSDP gathers a block whole for its forward and backward, and the next one ahead of time
        weights += 2 * block * (2 if shape.amp_dtype is not None else 4)
    gradients, optimizer = 4 * trainable // n, 8 * trainable // n

    fixed, per_image = block_activations(model_cfg, shape, device)
    b, tokens, width = shape.batch_size, model_cfg.num_tokens, model_cfg.embed_dim
    residual = 4 * b * tokens * width  # one (B, T, D) fp32 tensor: the stream between blocks
    stem_and_head = b * 3 * model_cfg.img_size**2 * 4 + 3 * residual  # the images, the embedding's and the head's few
    # `fixed` is mostly autocast's low-precision copies of the block's weights; under FSDP the
    # gathered weights are already in that precision (and counted above), so no block adds it
    fixed_per_block = fixed if shape.shards == 1 else 0
    if shape.grad_checkpointing:  # each block's input, and one block recomputed whole at a time
        activations = model_cfg.depth * residual + fixed + b * per_image + stem_and_head
    else:
        activations = model_cfg.depth * (fixed_per_block + b * per_image) + stem_and_head
    return MemoryPlan(weights=weights, gradients=gradients, optimizer=optimizer, activations=activations,
                      free=device_free_bytes(device))


def memory_advice(model_cfg: ViTConfig, shape: TrainingShape, device: torch.device, free: int) -> str:
    """Which one change makes the plan fit `free` bytes, each with its plan: the options this run
    does not use yet (FSDP over the fewest devices that fit), then the largest batch that fits."""
    def total(**change) -> int:
        return plan_memory(model_cfg, replace(shape, **change), device).total

    fitting = []
    if not shape.grad_checkpointing:
        fitting.append(("--grad-checkpointing", total(grad_checkpointing=True)))
    if not shape.lora_rank:
        fitting.append(("--lora 8", total(lora_rank=8)))
    fitting = [(flag, planned) for flag, planned in fitting if planned <= free]
    if shape.shards == 1:  # FSDP over the fewest devices that fit
        for n in (2, 4, 8):
            if (planned := total(shards=n)) <= free:
                fitting.append((f"torchrun --nproc_per_node {n} -m train ... --fsdp", planned))
                break
    batch = shape.batch_size // 2
    while batch >= 1 and (planned := total(batch_size=batch)) > free:
        batch //= 2
    if batch >= 1:
        fitting.append((f"--batch-size {batch}", planned))
    if not fitting:
        return "no single change fits: combine --grad-checkpointing, --lora and --fsdp over more devices"
    return "each of these fits: " + "; ".join(f"{flag} (about {size(planned)})" for flag, planned in fitting)
