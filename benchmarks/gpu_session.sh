#!/usr/bin/env bash
# The GPU figures still open (issue 10, and issue 22: SigLIP so400m with each option), in one run (about 10 minutes on one H100/H200), most
# important first, for a session lent a GPU:
#     . .device/device-setup.sh && bash benchmarks/gpu_session.sh 2>&1 | tee $OUT/gpu.log
# A failing step is reported and the next one still runs. The GPU's clocks, power and temperature
# are logged every second beside it ($OUT/gpu-clocks.csv), to read each figure against the clock
# it ran at.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
step() { echo; echo "=== $* ($(date +%T))"; "$@" 2>/tmp/step.err || { echo "=== FAILED: $*"; tail -5 /tmp/step.err; }; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader
nproc
python -c "import torch; print('torch', torch.__version__)"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,utilization.gpu --format=csv -l 1 > "$out/gpu-clocks.csv" &
clocks=$!
trap 'kill $clocks' EXIT
step python -m benchmarks.job                              # the default job, cold: compiled while decoding, pinned saves
step python -m benchmarks.levers                           # decode workers, eval eager vs compiled, last.pt in background
step python -m benchmarks.train --compare                  # steady rate, batch 256, attention as PyTorch picks it
step python -m benchmarks.train --compare --attention cudnn      # cuDNN's attention on Hopper
step python -m benchmarks.train --compare --attention efficient  # memory-efficient attention
step python -m benchmarks.train --compare --inductor triton.cudagraphs=True   # CUDA graphs for each block
step python -m benchmarks.train --compare --batch-size 512 # a larger batch
step python -m benchmarks.job -- --no-compile              # eager throughout: what compilation buys
step python -m benchmarks.memory --data "$(python -c 'from benchmarks.train import DEFAULT_DATA; print(DEFAULT_DATA)')" --device cuda   # issue 22: SigLIP so400m, each option: plan vs max_memory_allocated, img/s
