"""Timing helpers shared by the benchmarks."""

import statistics
import time

import torch

from infer.cpu import cpu_kind


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds that fn() takes, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(candidates: dict, images_per_run: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Run each candidate in turn, `repeats` rounds, so that drift (heat, other load) hits all
    sides alike; return the median images/s of each."""
    rates = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            rates[name].append(images_per_run / timed(fn, device))
    return {name: statistics.median(values) for name, values in rates.items()}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_kind()  # e.g. "AMD EPYC (AVX2, 2 threads)": the CPU kind goes with every CPU figure
