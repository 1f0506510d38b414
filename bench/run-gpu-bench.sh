#!/usr/bin/env bash
# GPU benchmark: expertd's CUDA backend and transformers side by side on a synthetic model with
# OLMoE-1B-7B shapes (hidden 2048, 16 layers, 64 experts of width 1024, top-8, bf16; random
# weights written by xd-synth-model, ~13 GiB, never committed). Needs a GPU, torch and
# transformers. Usage: bench/run-gpu-bench.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
model=${BENCH_MODEL_DIR:-/tmp/olmoe-1b-7b}
if [ ! -f "$model/model.safetensors" ]; then
  "$build/tools/xd-synth-model" --out "$model" --vocab 50304 --hidden 2048 --layers 16 \
    --heads 16 --kv-heads 16 --experts 64 --top-k 8 --ffn 1024 --max-pos 4096 --seed 1
fi
"$build/bench/bench-engine" --model "$model" --device cuda --max-batch 64 --repeats 3
python3 bench/transformers_baseline.py --model "$model" --batches 1,8,64 --repeats 3
