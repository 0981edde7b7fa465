"""Training on several processes (torchrun): PyTorch's DDP or FSDP2, and what both need.

    DDP    every rank holds the whole model, gradients and AdamW state; gradients are averaged
           across ranks in backward. Fast, but a model must fit one device with its optimiser.
    FSDP   (`--fsdp`: `torch.distributed.fsdp.fully_shard`, "FSDP2") every rank holds 1/N of each
           weight, gradient and AdamW moment. Each encoder block is a unit: just before its
           forward (and again before its backward) its weights are all-gathered whole, and
           dropped after; its gradients are reduce-scattered back to the shards. A 1.1B ViT-g
           with AdamW needs ~18 GB before activations; on 8 GPUs, ~2.2 GB each.

Either way the files are those of a one-process run: train/state.py gathers a sharded model on
rank 0 for them and shards a saved state back. This file shards, and makes the ranks stop together.
"""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2, in place: each encoder block a unit, then the rest (embeddings, final norm, head)
    as the root's. Parameters move to this rank's device as they are sharded (one block at a
    time, so a giant never has to fit one device whole).

    Mixed precision (--amp) stays autocast's, as in a one-process run, so that a sharded run
    computes what DDP computes and `infer` reproduces its accuracy: the weights are gathered in
    fp32 and autocast casts them per operation. FSDP's own policy (MixedPrecisionPolicy,
    gathering in bf16) would halve that traffic, but it computes the LayerNorms from rounded
    weights and, casting each block's input, carries the residual stream in bf16; on CPUs,
    whose autocast leaves LayerNorm alone, bf16 weights meeting fp32 inputs fail outright."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # the ranks, on the training device's kind
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


class StopAgreement:
    """Under torchrun every rank must stop after the same step: one that left early would leave
    the others waiting forever in the next all-reduce. After each step, a rank's "asked to stop"
    flag is summed over the ranks in the background (gloo, on the CPU: the GPU is not waited
    for), and the sum is read after the next step, so every rank sees the same sums at the same
    steps and stops together, one step after the first of them was asked."""

    def __init__(self, group=None):
        self.group = group  # a gloo group of all ranks; None in a one-process run
        self.pending: tuple | None = None

    @classmethod
    def for_run(cls) -> "StopAgreement":
        """Every rank must make it at the same point (new_group is collective)."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return cls()
        return cls(dist.new_group(backend="gloo"))

    def _collect(self) -> bool:
        if self.pending is None:
            return False
        work, flag = self.pending
        work.wait()
        self.pending = None
        return bool(flag.item())

    def after_step(self, asked: bool) -> bool:
        """Whether to stop now; `asked`: this rank has been asked to."""
        if self.group is None:
            return asked
        agreed = self._collect()
        flag = torch.tensor([int(asked)])
        self.pending = (dist.all_reduce(flag, group=self.group, async_op=True), flag)
        return agreed

    def close(self) -> None:
        """Wait for the sum in flight (every rank started it, so it completes) and drop it: an
        unfinished gloo work object alive at exit aborts the process (`leave`)."""
        if self.group is not None:
            self._collect()

    def settle(self, asked: bool) -> bool:
        """At the end of an epoch: whether any rank has been asked to stop, waiting for the answer."""
        if self.group is None:
            return asked
        asked = self._collect() or asked
        flag = torch.tensor([int(asked)])
        dist.all_reduce(flag, group=self.group)
        return bool(flag.item())


def leave(finished: bool) -> None:
    """End the process group so that the process exits cleanly. The rare gloo abort at exit
    ("terminate called ...", SIGABRT) came from gloo work objects still alive when the
    interpreter shut down: their tensors hold Python references, and freeing those needs the
    GIL of an interpreter that is going away. So: no work object left (`StopAgreement.close`;
    DDP's reducer holds its last ones in reference cycles, which gc.collect frees), every rank
    done talking (a barrier, after a finished run; after a failure a rank may never come), then
    destroy_process_group while Python is fully alive."""
    import gc

    if not dist.is_initialized():
        return
    gc.collect()
    if finished:
        dist.barrier()
    dist.destroy_process_group()
