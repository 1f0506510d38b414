#!/usr/bin/env bash
# Smoke test of bench/loadgen.py (suite http, a few seconds): a tiny random model served by
# `expertd serve` on an ephemeral port, then loadgen in closed loop (completions) and open loop
# (chat); checks the JSON: every request completed, token counts equal max_tokens, latency
# percentiles present and ordered.
# Usage: test-loadgen.sh EXPERTD SYNTH_MODEL FIXTURES_DIR SOURCE_DIR WORK_DIR
set -u
expertd=$1 synth=$2 fixtures=$3 src=$4 work=$5
mkdir -p "$work"
work=$(cd "$work" && pwd)

. "$src/tests/venv-prologue.sh"

model=$work/lg-model
if [ ! -f "$model/model.safetensors" ]; then
  "$synth" --out "$model" --vocab 602 --layers 2 --hidden 64 --experts 8 --top-k 2 --max-pos 2048 >/dev/null || exit 1
fi
cp "$fixtures/tokenizers/qwen2/tokenizer.json" "$fixtures/chat/qwen2_moe/tokenizer_config.json" "$model/"

"$expertd" serve --model "$model" --port 0 --threads 1 --log-level warn 2>"$work/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.log" | head -1)
  [ -n "$url" ] && curl -sf "$url/health" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "FAIL: expertd serve exited"; cat "$work/serve.log"; exit 1; }
  sleep 0.1
done
[ -n "$url" ] || { echo "FAIL: expertd serve did not start"; exit 1; }

fail=0
"$py" "$src/bench/loadgen.py" --base-url "$url/v1" --model lg-model --concurrency 4 \
  --num-requests 12 --prompt-tokens 8:24 --output-tokens 16 --ignore-eos --include-usage \
  --out "$work/closed.json" || fail=1
"$py" "$src/bench/loadgen.py" --base-url "$url/v1" --model lg-model --rate 50 --endpoint chat \
  --num-requests 10 --prompt-tokens 8 --output-tokens 4:8 --ban-token 2 --include-usage \
  --per-request --out "$work/open.json" || fail=1
[ $fail = 0 ] || { echo "FAIL: loadgen exited non-zero"; exit 1; }

"$py" - "$work/closed.json" "$work/open.json" <<'EOF'
import json, sys
ok = True
def check(cond, what):
    global ok
    print(("ok   " if cond else "FAIL ") + what)
    ok = ok and cond
c = json.load(open(sys.argv[1]))["summary"]
check(c["completed"] == 12 and c["errors"] == 0, "closed loop: 12 of 12 requests completed")
check(c["output_tokens"] == 12 * 16, "closed loop: 16 output tokens each (usage)")
check(c["prompt_tokens_reported_by_server"] == 12, "closed loop: server reported prompt tokens")
for k in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
    s = c[k]
    check(s["count"] > 0 and 0 <= s["p50"] <= s["p99"] <= s["max"], f"closed loop: {k} p50 <= p99 <= max")
check(c["output_throughput_tps"] > 0 and c["request_throughput_rps"] > 0, "closed loop: throughput > 0")
d = json.load(open(sys.argv[2]))
o = d["summary"]
check(d["config"]["mode"] == "open-loop-poisson", "open loop: mode recorded")
check(o["completed"] == 10 and o["errors"] == 0, "open loop (chat): 10 of 10 completed")
check(all(4 <= r["output_tokens"] <= 8 for r in d["requests"]), "open loop: output tokens within 4:8")
check(o["finish_reasons"] == {"length": 10}, "open loop: EOS banned, every request ends by length")
sys.exit(0 if ok else 1)
EOF
