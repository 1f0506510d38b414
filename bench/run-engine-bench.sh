#!/usr/bin/env bash
# Engine baseline: makes the synthetic OLMoE-proportioned model (hidden 1024, 8 layers,
# 32 experts of width 512, top-4, vocab 32000, bf16; never committed) and runs bench-engine.
# Usage: bench/run-engine-bench.sh [bench-engine options]   (after tools/bootstrap.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
model=build/bench-models/olmoe-1024
if [ ! -f "$model/model.safetensors" ]; then
  build/tools/xd-synth-model --out "$model" --vocab 32000 --hidden 1024 --layers 8 --heads 16 \
    --kv-heads 4 --experts 32 --top-k 4 --ffn 512 --max-pos 4096 --seed 1
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
build/bench/bench-engine --model "$model" "$@"
