#!/usr/bin/env bash
# HTTP integration tests: makes a test model (random weights, the qwen2 fixture tokenizer with a
# ChatML template), a Python venv with the official openai SDK, then runs tests/test_http.py
# against `expertd serve` on ephemeral ports.
# Usage: test-http.sh EXPERTD SYNTH_MODEL FIXTURES_DIR SOURCE_DIR WORK_DIR
set -u
expertd=$1 synth=$2 fixtures=$3 src=$4 work=$5
mkdir -p "$work"
work=$(cd "$work" && pwd)

. "$src/tests/venv-prologue.sh"

# The model: vocab equals the tokenizer's (600 tokens + <think> and </think> as 600, 601).
model=$work/model
if [ ! -f "$model/model.safetensors" ]; then
  "$synth" --out "$model" --vocab 602 --layers 2 --hidden 64 --experts 8 --top-k 2 --max-pos 8192 >/dev/null || exit 1
fi
cp "$fixtures/tokenizers/qwen2/tokenizer.json" "$model/"
cp "$fixtures/chat/qwen2_moe/tokenizer_config.json" "$model/"
# The same weights with a chat template that does not parse.
odd=$work/model-odd-template
mkdir -p "$odd"
for f in config.json model.safetensors tokenizer.json; do ln -sf "$model/$f" "$odd/$f"; done
cat >"$odd/tokenizer_config.json" <<'JSON'
{"eos_token": "<|im_end|>", "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor"}
JSON

# the load-progress test makes its own, larger model
export XD_SYNTH_MODEL="$synth"
exec "$py" "$src/tests/test_http.py" "$expertd" "$model" "$odd"
