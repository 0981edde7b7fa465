#!/usr/bin/env bash
# Every GPU figure of benchmarks/README.md in one run (about 8 minutes on one H100/H200), most
# important first, for a session lent a GPU:
#     . .device/device-setup.sh && bash benchmarks/gpu_session.sh 2>&1 | tee $OUT/gpu.log
# A failing step is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "=== $* ($(date +%T))"; "$@" 2>/tmp/step.err || { echo "=== FAILED: $*"; tail -5 /tmp/step.err; }; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
nproc
step python -m benchmarks.job                              # the default job, cold: regional compilation, eager eval
step python -m benchmarks.levers                           # decode workers, eval eager vs compiled, last.pt in background
step python -m benchmarks.model --device cuda --dtype bf16 --batch-size 256 --compile   # ours vs timm, compiled
step python -m benchmarks.model --device cuda --dtype bf16 --batch-size 256            # ours vs timm, eager
step python -m benchmarks.train --compare synthetic        # steady img/s and MFU, real data vs synthetic
step python -m benchmarks.job -- --batch-size 256 --lr 2e-4   # batch 256, learning rate scaled with it
step python -m benchmarks.job -- --no-compile              # eager throughout: what compilation buys
