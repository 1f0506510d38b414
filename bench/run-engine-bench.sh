#!/usr/bin/env bash
# Engine baseline: makes the synthetic OLMoE-proportioned model (hidden 1024, 8 layers,
# 32 experts of width 512, top-4, vocab 32000, bf16; never committed) and runs bench-engine,
# once per weight format in FORMATS (default "none": as stored; e.g. FORMATS="none q8 q4"
# runs bf16, q8 and q4 one after another in this one run, each in its own process).
# SHAPE=olmoe-1b-7b uses the OLMoE-1B-7B-shaped model of issue 14 instead (hidden 2048, 8
# layers, 16 heads, 64 experts of width 1024, top-8, vocab 4096: 6.4 GB).
# Usage: [FORMATS="none q8 q4"] [SHAPE=...] bench/run-engine-bench.sh [bench-engine options]
#        (after tools/bootstrap.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${SHAPE:-olmoe-1024}
model=build/bench-models/$shape
if [ ! -f "$model/model.safetensors" ]; then
  case "$shape" in
    olmoe-1024)
      build/tools/xd-synth-model --out "$model" --vocab 32000 --hidden 1024 --layers 8 \
        --heads 16 --kv-heads 4 --experts 32 --top-k 4 --ffn 512 --max-pos 4096 --seed 1 ;;
    olmoe-1b-7b)
      build/tools/xd-synth-model --out "$model" --vocab 4096 --hidden 2048 --layers 8 \
        --heads 16 --kv-heads 16 --experts 64 --top-k 8 --ffn 1024 --max-pos 4096 --seed 1 ;;
    *) echo "run-engine-bench.sh: unknown SHAPE $shape" >&2; exit 2 ;;
  esac
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
for f in ${FORMATS:-none}; do
  build/bench/bench-engine --model "$model" --quantize "$f" "$@"
done
