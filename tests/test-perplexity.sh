#!/usr/bin/env bash
# `expertd perplexity` on the demo model against transformers' perplexity of the same text, ids
# and windows (tests/fixtures/demo-moe/perplexity.json, tools/demo_model/make_perplexity.py),
# in the checkpoint's precision and served as q8 and q4; and its errors.
# Usage: test-perplexity.sh EXPERTD MODEL_DIR FIXTURES_DIR
set -u
expertd=$1 model=$2 fixtures=$3
ref=$fixtures/demo-moe/perplexity.json text=$fixtures/demo-moe/heldout-16k.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }

# 12 of the fixture's 34 windows of 128 tokens keep the three runs short
chunks=12
# check NAME QUANT REF TOL_REL: the PPL of the first $chunks windows against the reference's
# (its f32 or bf16 run) within TOL_REL; unquantized also every window's mean -log p within 2e-4.
check() {
  local name=$1 quant=$2 which=$3 tol=$4
  if ! "$expertd" perplexity --model "$model" --text "$text" --ctx 128 --chunks $chunks \
       --threads 2 --quantize "$quant" --json >"$tmp/$name.json" 2>"$tmp/$name.err"; then
    fail "$name" "exit $?: $(head -c 300 "$tmp/$name.err")"; return
  fi
  local verdict
  verdict=$(python3 - "$tmp/$name.json" "$ref" "$which" "$tol" "$chunks" "$quant" <<'PY'
import json, math, sys
got, ref = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
which, tol, n = sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
want_nll = ref[which]["window_mean_nll"][:n]
want = math.exp(sum(want_nll) / n)
problems = []
if got["n_tokens"] != ref["n_tokens"]:
    problems.append(f"{got['n_tokens']} tokens, transformers' tokenizer {ref['n_tokens']}")
if got["n_windows"] != n or got["scored_per_window"] != 128 - 1 - 64:
    problems.append(f"{got['n_windows']} windows scoring {got['scored_per_window']}")
rel = abs(got["ppl"] - want) / want
if not rel <= tol:
    problems.append(f"PPL {got['ppl']:.5f} vs transformers {which} {want:.5f}: {rel:.2e} > {tol}")
if sys.argv[6] == "none":
    worst = max(abs(a - b) for a, b in zip(got["window_mean_nll"], want_nll))
    if not worst <= 2e-4:
        problems.append(f"a window's mean -log p differs by {worst:.2e} > 2e-4")
print("; ".join(problems) if problems else
      f"OK PPL {got['ppl']:.4f} vs transformers {which} {want:.4f} ({rel:.2e}, {got['weights']})")
PY
)
  case "$verdict" in
    OK*) ok "$name (${verdict#OK })" ;;
    *) fail "$name" "$verdict" ;;
  esac
}

# the checkpoint's bf16 weights in f32 arithmetic: transformers' f32 run, to f32 rounding
check ppl_matches_transformers none f32 1e-5
# q8: within 0.5% of the full-precision perplexity (issue 15's goal; measured +0.01%)
check ppl_q8_within_half_percent q8 f32 5e-3
# q4 (q4_1 blocks): within 2% (measured +0.3%)
check ppl_q4_within_two_percent q4 f32 2e-2

head -c 600 "$text" >"$tmp/short.txt"
"$expertd" perplexity --model "$model" --text "$tmp/short.txt" --ctx 128 >"$tmp/out" 2>&1
st=$?
if [ $st = 2 ] && grep -q -- "--ctx 128 needs at least 256" "$tmp/out"; then ok short_text_refused
else fail short_text_refused "exit $st: $(head -c 300 "$tmp/out")"; fi
"$expertd" perplexity --model "$model" >"$tmp/out" 2>&1
st=$?
if [ $st = 2 ] && grep -q -- "--text FILE is required" "$tmp/out"; then ok text_required
else fail text_required "exit $st: $(head -c 300 "$tmp/out")"; fi
"$expertd" perplexity --model "$model" --text "$text" --ctx 1024 >"$tmp/out" 2>&1
st=$?
if [ $st = 2 ] && grep -q "max_position_embeddings" "$tmp/out"; then ok ctx_over_model_refused
else fail ctx_over_model_refused "exit $st: $(head -c 300 "$tmp/out")"; fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
