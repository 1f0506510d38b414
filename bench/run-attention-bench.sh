#!/usr/bin/env bash
# Blocked CPU attention against the loop it replaced (results/attention-cpu.md): for each prompt
# length, bench-engine's prefill on a 2-layer OLMoE-1024-shaped model (the layers of
# run-engine-bench.sh's olmoe-1024: hidden 1024, 16 heads, 4 KV heads of 64, 32 experts of 512,
# top-4; never committed) by an older build (BASE, e.g. a worktree of main built in BASE/build)
# and by this one, one after the other, then bench-attention's one-layer attention (blocked and
# reference in one process). Single-threaded by default (THREADS=1), with CPU times, so a loaded
# machine still gives the kernels' own cost.
# Usage: BASE=/tmp/attn-base [LENS="512 2048 4096"] [THREADS=1] bench/run-attention-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
model=build/bench-models/olmoe-1024-l2
if [ ! -f "$model/model.safetensors" ]; then
  build/tools/xd-synth-model --out "$model" --vocab 32000 --hidden 1024 --layers 2 \
    --heads 16 --kv-heads 4 --experts 32 --top-k 4 --ffn 512 --max-pos 8192 --seed 1 >&2
fi
threads=${THREADS:-1}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
echo "commit: $(git rev-parse --short HEAD); base: $(git -C "${BASE:?set BASE}" rev-parse --short HEAD)" >&2
for len in ${LENS:-512 2048 4096}; do
  echo "== prompt $len, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  echo "base:"
  "$BASE/build/bench/bench-engine" --model "$model" --prompt-len "$len" --repeats 1 \
    --decode-steps 2 --max-batch 1 --threads "$threads"
  echo "blocked:"
  build/bench/bench-engine --model "$model" --prompt-len "$len" --repeats 1 --decode-steps 2 \
    --max-batch 1 --threads "$threads"
  echo "attention, one layer:"
  build/bench/bench-attention --prompt-len "$len" --repeats 3 --threads "$threads"
done
