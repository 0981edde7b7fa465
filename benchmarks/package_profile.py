"""Where a compiled package's time goes: each kernel's share of a batch.

    python -m benchmarks.package_profile                                  # ViT-B/16 stand-in, int8-bf16
    python -m benchmarks.package_profile --model vit_small_patch16_224 --precision bf16
    python -m benchmarks.package_profile --checkpoint CK

The package's own graph (infer/compiled.program: exported, quantised, bf16 between) is compiled
by Inductor as the package is (weights frozen), but in this process and with each generated
kernel named to the profiler (`cpp.enable_kernel_profile`), then run on batches of 16 under
torch.profiler. Printed per batch: the milliseconds and share of each kernel, library calls
(oneDNN's int8 layers, PyTorch's fused attention) and Inductor's own fused kernels alike.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.cpu_runtimes import stand_in
from infer import compiled
from infer.cpu import cpu_kind
from infer.precision import cpu_precisions
from vit.checkpoint import load_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.package_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="the stand-in (cpu_runtimes' random weights)")
    parser.add_argument("--checkpoint", help="a real fine-tune instead of the stand-in")
    parser.add_argument("--precision", default="int8-bf16", choices=cpu_precisions())
    parser.add_argument("--batches", type=int, default=3, help="batches of 16 profiled (after 3 untimed)")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args(argv)
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as work:
        model, card = load_model(Path(args.checkpoint) if args.checkpoint else stand_in(args.model, Path(work)))
    inductor_config.freezing, inductor_config.cpp.enable_kernel_profile = True, True
    images = torch.randn(compiled.BATCH_SIZE, 3, card.img_size, card.img_size)
    with torch.no_grad(), compiled.quiet_compilers():
        run = torch.compile(compiled.program(model, card.img_size, args.precision).module())
        for _ in range(3):
            run(images)  # (compiles on the first)
        start = time.perf_counter()
        for _ in range(args.batches):
            run(images)
        rate = compiled.BATCH_SIZE * args.batches / (time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            for _ in range(args.batches):
                run(images)
    kernels = [e for e in profiled.key_averages() if e.key.startswith(("graph_", "aten::", "onednn::", "mkldnn::"))
               and e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in kernels)
    print(f"{card.model_name} {args.precision}, batch {compiled.BATCH_SIZE}, {torch.get_num_threads()} threads, "
          f"on {cpu_kind()}: {rate:.1f} img/s unprofiled; per batch:")
    for e in sorted(kernels, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        name = e.key.removeprefix("graph_0_")
        print(f"  {e.self_cpu_time_total / 1000 / args.batches:8.1f} ms  {e.self_cpu_time_total / total:6.1%}  "
              f"{e.count // args.batches:3d} calls  {name[:90]}")
    print(f"  {total / 1000 / args.batches:8.1f} ms  in all")


if __name__ == "__main__":
    main()
