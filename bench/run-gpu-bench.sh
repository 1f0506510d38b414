#!/usr/bin/env bash
# GPU benchmark: expertd's CUDA backend and transformers side by side on a synthetic model with
# OLMoE-1B-7B shapes (hidden 2048, 16 layers, 16 heads, 64 experts of width 1024, top-8, vocab
# 50304, bf16; random weights written by xd-synth-model, 12.9 GiB, never committed). Builds
# nothing: needs an existing build with CUDA, a GPU, and torch + transformers for $PYTHON.
# Usage: bench/run-gpu-bench.sh [BUILD_DIR]      (default: build)
# Environment: BENCH_MODEL_DIR (/tmp/olmoe-1b-7b, written if absent), BENCH_REPEATS (3),
# PYTHON (python3).
# Protocol, the same for both engines (median of BENCH_REPEATS runs after a warm-up):
#   decode   prefill 128 tokens per sequence, then time 64 decode steps, batch 1, 8, 64;
#   prefill  one step of 512 tokens per sequence, batch 1 and 8.
# stdout: three JSON objects (bench-engine decode run, bench-engine prefill run, transformers);
# progress on stderr.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$repo/build}" 2>/dev/null && pwd) || {
  echo "run-gpu-bench: no build directory ${1:-$repo/build}" >&2
  exit 1
}
model=${BENCH_MODEL_DIR:-/tmp/olmoe-1b-7b}
repeats=${BENCH_REPEATS:-3}
python=${PYTHON:-python3}

for tool in "$build/tools/xd-synth-model" "$build/bench/bench-engine"; do
  if [ ! -x "$tool" ]; then
    echo "run-gpu-bench: $tool is missing; build first (ninja -C $build)" >&2
    exit 1
  fi
done

# config.json is written after model.safetensors is complete, so both present means a whole model
if [ ! -f "$model/config.json" ] || [ ! -f "$model/model.safetensors" ]; then
  echo "run-gpu-bench: writing the synthetic OLMoE-1B-7B-shaped model to $model" >&2
  start=$SECONDS
  "$build/tools/xd-synth-model" --out "$model" --vocab 50304 --hidden 2048 --layers 16 \
    --heads 16 --kv-heads 16 --experts 64 --top-k 8 --ffn 1024 --max-pos 4096 --seed 1 >&2
  echo "run-gpu-bench: model written in $((SECONDS - start)) s" >&2
fi

if command -v nvidia-smi >/dev/null; then
  echo "run-gpu-bench: $(nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader | head -n 1)" >&2
fi
echo "run-gpu-bench: expertd decode (ctx 128, 64 steps, batch 1/8/64)" >&2
"$build/bench/bench-engine" --model "$model" --device cuda --max-batch 64 --prompt-len 128 \
  --decode-steps 64 --repeats "$repeats"
echo "run-gpu-bench: expertd prefill (512 tokens, batch 1/8; its decode figures are 1 step)" >&2
"$build/bench/bench-engine" --model "$model" --device cuda --max-batch 8 --prompt-len 512 \
  --decode-steps 1 --repeats "$repeats"
echo "run-gpu-bench: transformers ($python)" >&2
"$python" "$repo/bench/transformers_baseline.py" --model "$model" --device cuda \
  --prompt-len 512 --ctx 128 --steps 64 --repeats "$repeats"
