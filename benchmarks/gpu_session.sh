#!/usr/bin/env bash
# Every GPU figure benchmarks/README.md still lacks, in one run (about 8 minutes on one H100/H200),
# for a session lent a GPU:  . .device/device-setup.sh && bash benchmarks/gpu_session.sh 2>&1 | tee $OUT/gpu.log
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m benchmarks.job                              # the default job, cold: regional compilation, eager eval
python -m benchmarks.job -- --no-compile              # the same job, eager throughout: what compilation buys
python -m benchmarks.model --device cuda --dtype bf16 --batch-size 256 --compile   # ours vs timm, compiled
python -m benchmarks.train --compare synthetic        # steady img/s and MFU, real data vs synthetic
