#!/usr/bin/env bash
# GPU check: fit the seed config and a generated 10M x 64 table on the GPU, compare with the CPU,
# and print throughput against a raw PyTorch loop and the card's bandwidth. Needs a CUDA build of
# torch and the package installed (pip install -e .). Under 5 minutes on one modern GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 300 python scripts/gpu_check.py
