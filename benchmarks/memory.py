"""The memory plan against measured peaks: does train/memory.py tell the truth?

    python -m benchmarks.memory --data ../shared/data/cifar10-jpg           # ~4 min on 2 CPU cores
    python -m benchmarks.memory --data ../shared/data/cifar10-jpg --only 0  # one configuration
    python -m benchmarks.memory --checkpointing-cost                         # its price in time (~1 min)
    python -m benchmarks.memory --data ... --device cuda                     # on a GPU: SigLIP so400m, each option

Each configuration runs in a fresh process (under torchrun for FSDP): the training loop's own
`prepare` and a few of its steps (`train_one_epoch`), so that every allocation the loop makes is
in the figure. Measured is the process's peak resident memory during them (VmHWM, its high-water
mark reset just before) minus what it held before (Python, PyTorch, the libraries). Under FSDP
each rank measures itself, and the larger is reported. On a GPU (`--device cuda`, GPU_CASES:
SigLIP so400m at 224 px, bf16, each option) it is torch.cuda.max_memory_allocated minus what was
allocated before, beside the steps' img/s (eager, 10 steps, the first included).

The plan counts live tensors, as torch.cuda.max_memory_allocated does on a GPU (this machine has
none). On a CPU, glibc's malloc by default raises its mmap threshold as large blocks are freed, so
later activations come from the heap and, once freed, stay resident: the process's RSS then holds
garbage that grows from step to step (ViT-S, LoRA: 2.3 GB resident at the third step for 1.3 GB
of live tensors). The children therefore run with MALLOC_MMAP_THRESHOLD_ fixed (--malloc fixed,
the default), so that freed blocks go back to the system and resident = live; `--malloc default`
measures what an ordinary process holds.
"""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One configuration: a model, a batch and the options that change memory."""

    model: str
    batch_size: int
    amp: str = "none"
    grad_checkpointing: bool = False
    lora: int | None = None
    fsdp: int = 0  # ranks (torchrun), 0: one process

    def flags(self) -> str:
        options = [f"--amp {self.amp}"] if self.amp != "none" else []
        options += ["--grad-checkpointing"] if self.grad_checkpointing else []
        options += [f"--lora {self.lora}"] if self.lora else []
        options += [f"torchrun x{self.fsdp} --fsdp"] if self.fsdp else []
        return f"{self.model} batch {self.batch_size}" + (", " + " ".join(options) if options else "")


CASES = [
    Case("vit_small_patch16_224", 32),
    Case("vit_small_patch16_224", 32, grad_checkpointing=True),
    Case("vit_small_patch16_224", 32, lora=8),
    Case("vit_small_patch16_224", 32, amp="bf16"),
    Case("vit_base_patch16_224", 16),
    Case("vit_base_patch16_224", 16, grad_checkpointing=True),
    Case("vit_base_patch16_224", 16, fsdp=2),
]
GPU_CASES = [
    Case("vit_so400m_patch14_siglip_224", 32, amp="bf16"),
    Case("vit_so400m_patch14_siglip_224", 32, amp="bf16", grad_checkpointing=True),
    Case("vit_so400m_patch14_siglip_224", 32, amp="bf16", lora=16),
    Case("vit_so400m_patch14_siglip_224", 128, amp="bf16", grad_checkpointing=True),
]
STEPS = 2  # the second step is the steady state: AdamW's moments exist from the first on
GPU_STEPS = 10


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS: now, VmHWM: the peak since the last reset)."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(case: Case, data: str, work: str, device: str = "cpu") -> dict:
    """In this process (one rank of it under torchrun): plan, then measure, the loop's steps."""
    import torch
    import torch.distributed as dist

    from train.config import TrainConfig
    from train.distributed import leave, rank_and_world
    from train.loop import prepare, train_one_epoch
    from train.state import EpochProgress
    from train.memory import TrainingShape, plan_memory
    from train.stop import StopRequest
    from vit.families import model_config

    if case.fsdp:
        dist.init_process_group("gloo")
    rank, world = rank_and_world()
    gpu = device != "cpu"
    steps = GPU_STEPS if gpu else STEPS
    cfg = TrainConfig(data=data, model=case.model, pretrained="none", img_size=224, epochs=1,
                      batch_size=case.batch_size, max_train_samples=case.batch_size * steps * world,
                      max_eval_samples=8, amp=case.amp, grad_checkpointing=case.grad_checkpointing, lora=case.lora,
                      fsdp=bool(case.fsdp), device=device, compile=False, num_workers=1 if not gpu else 8,
                      output_dir=f"{work}/out-{rank}", cache_dir=f"{work}/cache-{rank}")
    plan = plan_memory(model_config(case.model), TrainingShape.of(cfg, case.amp, world), torch.device(device))
    if gpu:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # reset VmHWM to the present resident size
    run = prepare(cfg)
    stop = StopRequest()
    stats = train_one_epoch(run, 0, 0, EpochProgress.zeros(run.device), stop)
    stop.restore()
    measured = (torch.cuda.max_memory_allocated() if gpu else _status("VmHWM")) - before
    result = {"planned": plan.total, "measured": measured, "rank": rank, "img_per_s": stats["train_img_per_s"]}
    if case.fsdp:
        gathered = [None] * world
        dist.all_gather_object(gathered, result)
        result = max(gathered, key=lambda r: r["measured"])
        leave(finished=True)
    return result


def run_case(case: Case, data: str, work: Path, malloc: str = "fixed", device: str = "cpu") -> dict:
    """Measure `case` in a fresh process; returns planned and measured bytes."""
    work.mkdir(parents=True, exist_ok=True)
    argv = ["--measure", json.dumps(asdict(case)), "--data", data, "--work", str(work), "--device", device]
    if case.fsdp:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(case.fsdp),
                   "--master_port", "29561", "-m", "benchmarks.memory", *argv]
    else:
        command = [sys.executable, "-m", "benchmarks.memory", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, case.fsdp)))}
    if malloc == "fixed":
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # blocks above 64 KiB: mmap'd, unmapped when freed
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{case.flags()}: failed\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def checkpointing_cost(model: str = "vit_small_patch16_224", batch_size: int = 32, rounds: int = 3) -> dict[bool, float]:
    """Seconds per training step without and with activation checkpointing (median of `rounds`,
    alternating, so that drift hits both alike)."""
    import time

    import torch
    import torch.nn.functional as F

    import vit
    from train.optim import build_optimizer

    torch.manual_seed(0)
    net = vit.create_model(model, num_classes=10, pretrained="none").train()
    optimizer = build_optimizer(net, 1e-4, 0.05)
    images, labels = torch.randn(batch_size, 3, 224, 224), torch.randint(0, 10, (batch_size,))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for checkpointing in (False, True):
            net.grad_checkpointing = checkpointing
            start = time.perf_counter()
            F.cross_entropy(net(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds[checkpointing].append(time.perf_counter() - start)
    return {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an ImageFolder root (CIFAR-10's JPEG copy)")
    parser.add_argument("--checkpointing-cost", action="store_true",
                        help="time a ViT-S/16 step (batch 32) without and with --grad-checkpointing instead")
    parser.add_argument("--work", default="/tmp/vit-memory-benchmark", help="scratch folder (default: %(default)s)")
    parser.add_argument("--only", type=int, action="append", help="run only CASES[i] (repeatable)")
    parser.add_argument("--malloc", choices=("fixed", "default"), default="fixed",
                        help="glibc's mmap threshold in the measured processes (the docstring) (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu (CASES) or cuda (GPU_CASES) (default: %(default)s)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one case, in this process (run_case's child)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Case(**json.loads(args.measure)), args.data, args.work, args.device)), flush=True)
        return 0
    from infer.cpu import cpu_kind

    if args.checkpointing_cost:
        plain, checkpointed = checkpointing_cost().values()
        print(f"CPU: {cpu_kind()}; ViT-S/16 training step, batch 32, fp32: {plain:.2f} s, with activation "
              f"checkpointing {checkpointed:.2f} s ({checkpointed / plain - 1:+.0%})")
        return 0
    if not args.data:
        parser.error("--data is required (or --checkpointing-cost)")

    if args.device == "cpu":
        print(f"CPU: {cpu_kind()}, {os.cpu_count()} cores; fp32 unless said; measured = peak RSS during "
              f"prepare + {STEPS} steps - RSS before; malloc: {args.malloc}")
    else:
        import torch

        print(f"GPU: {torch.cuda.get_device_name()}; measured = max_memory_allocated during prepare + {GPU_STEPS} "
              "eager steps - allocated before; img/s over those steps (the first included)")
    print(f"{'configuration':58} {'planned':>9} {'measured':>9} {'plan/measured':>14} {'img/s':>8}")
    for i, case in enumerate(CASES if args.device == "cpu" else GPU_CASES):
        if args.only and i not in args.only:
            continue
        result = run_case(case, args.data, Path(args.work) / str(i), args.malloc, args.device)
        ratio = result["planned"] / result["measured"]
        print(f"{case.flags():58} {result['planned'] / 2**20:7.0f} MB {result['measured'] / 2**20:6.0f} MB {ratio:13.2f} "
              f"{result['img_per_s']:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
