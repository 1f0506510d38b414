#!/usr/bin/env bash
# DeepSeek-V2-Lite-shaped engine benchmark: makes a synthetic checkpoint with V2-Lite's layer
# shapes (hidden 2048, 16 heads, MLA with kv_lora_rank 512, qk_nope 128, qk_rope 64, v 128,
# q_proj without q_lora, 64 experts of width 1408, top-6, 2 shared experts, a dense first layer of
# width 10944, vocab 102400, bf16) but LAYERS decoder layers (default 4: 1 dense + 3 MoE; V2-Lite
# has 27), never committed, and runs bench-engine on it.
# Usage: bench/run-deepseek-bench.sh [bench-engine options]   (after tools/bootstrap.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
layers=${LAYERS:-4}
model=build/bench-models/deepseek-v2-lite-${layers}l
if [ ! -f "$model/model.safetensors" ]; then
  build/tools/xd-synth-model --out "$model" --arch deepseek_v2 --vocab 102400 --hidden 2048 \
    --layers "$layers" --heads 16 --experts 64 --top-k 6 --ffn 1408 --kv-lora 512 --q-lora 0 \
    --nope 128 --rope-dim 64 --v-dim 128 --shared 2 --dense-layers 1 --dense-ffn 10944 \
    --max-pos 4096 --seed 1
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
build/bench/bench-engine --model "$model" "$@"
