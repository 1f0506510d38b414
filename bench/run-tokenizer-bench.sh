#!/usr/bin/env bash
# Tokenizer encode throughput, expertd against the tokenizers library side by side in one run,
# on ~4 MB of mixed text from files every Debian system has (licences, Python sources, docs), with
# a 32000-token byte-level BPE (Qwen2 split regex, NFC) trained on that text by tokenizers.
# Usage: bench/run-tokenizer-bench.sh PYTHON_WITH_TOKENIZERS   (after tools/bootstrap.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
dir=build/bench-tokenizer
mkdir -p "$dir"
if [ ! -f "$dir/text.txt" ]; then
  { cat /usr/share/common-licenses/*; find /usr/lib/python3* -name '*.py' | sort | head -400 | xargs cat; } \
    | iconv -f utf-8 -t utf-8 -c | head -c 4000000 > "$dir/text.txt"
fi
if [ ! -f "$dir/tokenizer.json" ]; then
  "$py" - "$dir" <<'PY'
import sys
from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, decoders, trainers
pat = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
t = Tokenizer(models.BPE())
t.normalizer = normalizers.NFC()
t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), "isolated"),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
t.decoder = decoders.ByteLevel()
t.train([sys.argv[1] + "/text.txt"], trainers.BpeTrainer(vocab_size=32000,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
t.save(sys.argv[1] + "/tokenizer.json")
PY
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >&2
build/bench/bench-tokenizer "$dir" "$dir/text.txt" 5
"$py" bench/tokenizers_baseline.py "$dir" "$dir/text.txt" 5
