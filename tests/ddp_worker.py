"""Run by tests/test_distributed.py under torchrun (gloo, CPU): one real epoch of the training loop
on each rank, then report which samples each rank saw and a checksum of its weights."""

import json
import sys

import torch
import torch.distributed as dist

from train.config import TrainConfig
from train.distributed import leave
from train.loop import prepare, train_one_epoch
from train.state import EpochProgress
from train.stop import StopRequest

data, output = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
cfg = TrainConfig(data=data, model="vit_tiny_patch16_224", pretrained="none", img_size=32, epochs=1, batch_size=8,
                  lr=1e-3, device="cpu", output_dir=output, cache_dir=output + "/cache", num_workers=1)
run = prepare(cfg)
batches = run.train_batches
seen = batches.order(0)[: len(batches) * cfg.batch_size].tolist()  # the samples this rank trains on
stop = StopRequest()
train_one_epoch(run, 0, 0, EpochProgress.zeros(run.device), stop)
stop.restore()
weights = torch.cat([p.detach().flatten() for p in run.model.parameters()])
report = {"rank": dist.get_rank(), "seen": seen, "checksum": weights.double().sum().item(),
          "first": weights[:1000].tolist(), "steps": len(batches)}
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, report)
if dist.get_rank() == 0:
    print(json.dumps(gathered), flush=True)
del run, batches
leave(finished=True)  # as train's CLI ends
