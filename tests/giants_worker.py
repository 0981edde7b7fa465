"""Run by tests/test_giants.py under torchrun (2 ranks, gloo, CPU): the real training loop,
`train.loop.train`, several times in one process group, then rank 0 compares the files.

    ddp        DDP, with EMA and layer decay, 2 epochs
    fsdp       the same under FSDP2                               -> its files equal ddp's (float tolerance)
    stopped    FSDP + activation checkpointing, SIGTERM to rank 1 alone in epoch 2 -> both ranks stop together
    resumed    the same, --resume stopped/last.pt                 -> its files equal fsdp's
    lora-ddp   LoRA rank 4 on q, v and out, DDP, 1 epoch, bf16 autocast
    lora-fsdp  the same under FSDP                                -> equal to lora-ddp's, adapters merged
    mae-ddp    MAE pretraining (--objective mae, patch 4, tiny decoder), DDP, 1 epoch
    mae-fsdp   the same under FSDP (the encoder's and decoder's blocks its units) -> equal to mae-ddp's
"""

import json
import os
import signal
import sys

import torch
import torch.distributed as dist

from train import loop
from train.config import TrainConfig
from train.distributed import leave
from train.stop import StopRequest

data, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank = dist.get_rank()
BASE = dict(data=data, model="vit_tiny_patch16_224", pretrained="none", img_size=32, batch_size=8, lr=1e-3,
            device="cpu", cache_dir=f"{out}/cache", num_workers=1, max_eval_samples=16, seed=1)
RECIPE = dict(epochs=2, ema=0.9, layer_decay=0.75, drop_path=0.1)


class StopsRankOne(StopRequest):
    """SIGTERM to rank 1 only, after its 7th step (the 2nd of epoch 2): the ranks must agree."""

    steps = 0

    def step_finished(self):
        super().step_finished()
        StopsRankOne.steps += 1
        if rank == 1 and StopsRankOne.steps == 7:
            os.kill(os.getpid(), signal.SIGTERM)


def run(name: str, **settings) -> str | None:
    cfg = TrainConfig(**{**BASE, **settings}, output_dir=f"{out}/{name}")
    try:
        loop.train(cfg)
    except loop.Interrupted as stop:
        return str(stop)
    return None


report = {"ddp": run("ddp", **RECIPE), "fsdp": run("fsdp", fsdp=True, **RECIPE)}
loop.StopRequest = StopsRankOne
report["stopped"] = run("stopped", fsdp=True, grad_checkpointing=True, **RECIPE)
loop.StopRequest = StopRequest
stopped_at = torch.load(f"{out}/stopped/last.pt", weights_only=True)
report["stopped_at"] = [stopped_at["epoch"], stopped_at["step"]]
report["resumed"] = run("resumed", fsdp=True, grad_checkpointing=True, resume=f"{out}/stopped/last.pt", **RECIPE)
LORA = dict(epochs=1, lora=4, lora_targets="q,v,out", amp="bf16", max_eval_samples=None)  # all 20 test images
report["lora-ddp"], report["lora-fsdp"] = run("lora-ddp", **LORA), run("lora-fsdp", fsdp=True, **LORA)
MAE = dict(epochs=1, objective="mae", patch_size=4, decoder="tiny")
report["mae-ddp"], report["mae-fsdp"] = run("mae-ddp", **MAE), run("mae-fsdp", fsdp=True, **MAE)
if rank == 0:
    print(json.dumps(report), flush=True)
leave(finished=True)  # as train's CLI ends
