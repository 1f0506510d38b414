#!/usr/bin/env bash
# Command-line tests of `expertd generate`, `expertd plan` and xd-synth-model: exit codes, messages, output.
# Usage: test-cli.sh EXPERTD SYNTH_MODEL FIXTURES_DIR CUDA_MODULE (its path, or 'none' where
# the build has no CUDA backend)
set -u
expertd=$1 synth=$2 fixtures=$3 cuda_module=${4:-none}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }

# expect NAME WANT_STATUS NEEDLE -- COMMAND...: runs COMMAND, checks exit status and that
# stdout+stderr contain NEEDLE.
expect() {
  local name=$1 want=$2 needle=$3; shift 4
  "$@" >"$tmp/out" 2>&1; local got=$?
  if [ "$got" != "$want" ]; then fail "$name" "exit $got, want $want: $(head -c 300 "$tmp/out")"
  elif ! grep -qF -- "$needle" "$tmp/out"; then fail "$name" "output lacks '$needle': $(head -c 300 "$tmp/out")"
  else ok "$name"; fi
}

olmoe=$fixtures/golden/olmoe-f32

# Greedy generation through the CLI equals transformers' greedy continuation.
prompt=$(python3 -c "import json;print(','.join(map(str,json.load(open('$olmoe/golden.json'))['greedy']['prompt'])))")
want=$(python3 -c "import json;print(','.join(map(str,json.load(open('$olmoe/golden.json'))['greedy']['tokens'])))")
got=$("$expertd" generate --model "$olmoe" --prompt-ids "$prompt" --max-tokens 32 --ignore-eos 2>/dev/null)
if [ "$got" = "$want" ]; then ok greedy_matches_transformers; else fail greedy_matches_transformers "got $got want $want"; fi

# --json is one object with the ids, logprobs and the finish reason.
"$expertd" generate --model "$olmoe" --prompt-ids "$prompt" --max-tokens 5 --json --logprobs 3 >"$tmp/j" 2>&1
if python3 - "$tmp/j" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert len(o["ids"]) == 5 and len(o["logprobs"]) == 5, o
assert o["finish_reason"] == "length" and o["completion_tokens"] == 5
assert all(len(s) == 3 for s in o["top_logprobs"])
# greedy: the chosen token is the best of the top logprobs
assert all(s[0]["id"] == t for s, t in zip(o["top_logprobs"], o["ids"]))
assert all(lp <= 0 for lp in o["logprobs"])
PY
then ok json_output; else fail json_output "$(cat "$tmp/j")"; fi

# Same seed, same sampled tokens; the synthetic model tool makes a model generate can run.
"$synth" --out "$tmp/synth" --vocab 300 --layers 2 >/dev/null
a=$("$expertd" generate --model "$tmp/synth" --prompt-ids 1,2,3 --max-tokens 12 --temperature 1 --seed 7 --ignore-eos 2>/dev/null)
b=$("$expertd" generate --model "$tmp/synth" --prompt-ids 1,2,3 --max-tokens 12 --temperature 1 --seed 7 --ignore-eos 2>/dev/null)
if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$(echo "$a" | tr ',' '\n' | wc -l)" = 12 ]; then ok seeded_sampling_reproducible
else fail seeded_sampling_reproducible "'$a' vs '$b'"; fi

# generate runs on every golden fixture and its greedy output equals transformers'.
for dir in "$fixtures"/golden/*/; do
  name=$(basename "$dir")
  p=$(python3 -c "import json;print(','.join(map(str,json.load(open('$dir/golden.json'))['greedy']['prompt'])))")
  w=$(python3 -c "import json;print(','.join(map(str,json.load(open('$dir/golden.json'))['greedy']['tokens'])))")
  g=$("$expertd" generate --model "$dir" --prompt-ids "$p" --max-tokens 32 --ignore-eos 2>"$tmp/err") || g="exit $?: $(cat "$tmp/err")"
  if grep -q '"quantization_config"' "$dir/config.json"; then
    # an FP8 fixture serves as q8 (an approximation: its greedy run leaves transformers' after
    # a near tie, at step 3 and 6 of these; test-golden's fp8-f32 runs hold the dequantized
    # model to it): 32 tokens, the first one transformers'
    if [ "$(echo "$g" | tr ',' '\n' | grep -c '^[0-9][0-9]*$')" = 32 ] &&
       [ "${g%%,*}" = "${w%%,*}" ]; then ok "generate_$name"
    else fail "generate_$name" "$g"; fi
    # served as stored (--fp8 native, or EXPERTD_FP8): exactly transformers' dequantized
    # weights, so exactly its greedy tokens
    n=$("$expertd" generate --model "$dir" --fp8 native --prompt-ids "$p" --max-tokens 32 --ignore-eos 2>"$tmp/err") || n="exit $?: $(cat "$tmp/err")"
    if [ "$n" = "$w" ]; then ok "generate_${name}_native"; else fail "generate_${name}_native" "$n"; fi
    n=$(EXPERTD_FP8=native "$expertd" generate --model "$dir" --prompt-ids "$p" --max-tokens 32 --ignore-eos 2>"$tmp/err") || n="exit $?: $(cat "$tmp/err")"
    if [ "$n" = "$w" ]; then ok "generate_${name}_native_env"; else fail "generate_${name}_native_env" "$n"; fi
    continue
  fi
  if [ "$g" = "$w" ]; then ok "generate_$name"; else fail "generate_$name" "$g"; fi
done

# Text in, text out, with a tokenizer.json next to the weights.
"$synth" --out "$tmp/textmodel" --vocab 512 --layers 1 >/dev/null
cp "$fixtures/../fuzz/corpus/tokenizer/gpt2-small.json" "$tmp/textmodel/tokenizer.json"
expect text_prompt_generates 0 "Hello world" -- "$expertd" generate --model "$tmp/textmodel" --prompt "Hello world" --max-tokens 8 --ignore-eos

expect missing_model_dir 1 "config.json" -- "$expertd" generate --model "$tmp/nope" --prompt-ids 1
expect no_model_option 2 "--model" -- env -u EXPERTD_MODEL "$expertd" generate --prompt-ids 1
expect prompt_id_out_of_vocab 2 "--prompt-ids" -- "$expertd" generate --model "$olmoe" --prompt-ids 1,269
expect prompt_ids_garbage 2 "--prompt-ids" -- "$expertd" generate --model "$olmoe" --prompt-ids 1,x
expect text_prompt_needs_tokenizer 2 "tokenizer.json" -- "$expertd" generate --model "$olmoe" --prompt hello
expect unknown_option 2 "--frobnicate" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --frobnicate 3
expect temperature_out_of_range 2 "--temperature" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --temperature -1
expect quantize_q8_generates 0 "," -- "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 3 --ignore-eos --quantize q8
expect quantize_q4_env_generates 0 "," -- env EXPERTD_QUANTIZE=q4 EXPERTD_QUANTIZE_EXPERTS_ONLY=1 "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 3 --ignore-eos
# q4k: the fixture's 64 columns fall back to q4_1 (said on stderr); by option and by environment
expect quantize_q4k_generates 0 "," -- "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 3 --ignore-eos --quantize q4k
expect quantize_q4k_env_generates 0 "," -- env EXPERTD_QUANTIZE=q4k "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 3 --ignore-eos
# The expert pack (the suite runs with EXPERTD_PACK=off): written by the first --quantize run
# beside a writable checkpoint, mapped by the second with the same tokens; --pack off leaves none.
"$synth" --out "$tmp/packed" --vocab 300 --layers 2 >/dev/null
a=$(EXPERTD_PACK=auto "$expertd" generate --model "$tmp/packed" --prompt-ids 1,2,3 --max-tokens 6 --ignore-eos --quantize q4 2>"$tmp/pack1")
b=$(EXPERTD_PACK=auto "$expertd" generate --model "$tmp/packed" --prompt-ids 1,2,3 --max-tokens 6 --ignore-eos --quantize q4 2>"$tmp/pack2")
if [ -n "$a" ] && [ "$a" = "$b" ] && [ -f "$tmp/packed/expertd-q4.pack" ] &&
   grep -q "writing" "$tmp/pack1" && grep -q "mapped" "$tmp/pack2"; then ok pack_written_then_mapped
else fail pack_written_then_mapped "$a / $b: $(cat "$tmp/pack1" "$tmp/pack2" | head -c 400)"; fi
"$expertd" generate --model "$tmp/packed" --prompt-ids 1 --max-tokens 1 --quantize q8 --pack off >/dev/null 2>&1
if [ ! -e "$tmp/packed/expertd-q8.pack" ]; then ok pack_off_writes_none; else fail pack_off_writes_none "a q8 pack was written"; fi
expect pack_unknown_mode 2 "'--pack': 'maybe' is not auto or off" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --quantize q8 --pack maybe
expect fp8_unknown_mode 2 "'--fp8': 'fp4' is not q8 or native" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --fp8 fp4
expect kv_dtype_unknown 2 "'--kv-dtype' (EXPERTD_KV_DTYPE, config key kv-dtype): 'f8' is not f32, bf16 or f16" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --kv-dtype f8
expect kv_dtype_refused_on_cuda 2 "'--kv-dtype bf16' with '--device cuda'" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --kv-dtype bf16 --device cuda
# a bf16 / f16 KV cache: transformers' greedy continuation still (this fixture's margins are wide)
for kv in bf16 f16; do
  g=$("$expertd" generate --model "$olmoe" --prompt-ids "$prompt" --max-tokens 32 --ignore-eos --kv-dtype $kv 2>/dev/null)
  if [ "$g" = "$want" ]; then ok "kv_dtype_${kv}_greedy"; else fail "kv_dtype_${kv}_greedy" "got $g want $want"; fi
done
g=$(EXPERTD_KV_DTYPE=f16 "$expertd" generate --model "$olmoe" --prompt-ids "$prompt" --max-tokens 32 --ignore-eos 2>/dev/null)
if [ "$g" = "$want" ]; then ok kv_dtype_from_environment; else fail kv_dtype_from_environment "got $g want $want"; fi
expect kv_dtype_refused_with_mla 1 "MLA" -- "$expertd" generate --model "$fixtures/golden/deepseek_v2-bf16" --prompt-ids 1,2 --max-tokens 2 --kv-dtype bf16
expect quantize_unknown_format 2 "'q5' is not q8, q4, q4k or none" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --quantize q5
expect quantize_refused_on_cuda 2 "no quantized kernels yet" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --quantize q8 --device cuda
expect quantize_q4k_refused_on_cuda 2 "'--quantize q4k' with '--device cuda'" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --quantize q4k --device cuda
expect context_exceeded 2 "max_position_embeddings" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --max-tokens 300
if ! "$expertd" version | grep -q '^gpus: [0-9]'; then
  expect cuda_without_gpu 1 "device cuda" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
else
  expect cuda_generates 0 "," -- "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 4 --device cuda
fi
if "$expertd" version | grep -q '^backends:.*cuda'; then
  # offloading on the GPU has never run on one: refused, GPU or not, until the device check
  expect cuda_offload_refused_until_run 1 "has not yet run on a GPU" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda --expert-cache-slots 3
  # deepseek's MLA and grouped routing have no CUDA kernels that have run: refused, GPU or not
  expect cuda_deepseek_refused 1 "multi-head latent attention" -- "$expertd" generate --model "$fixtures/golden/deepseek_v3-f32" --prompt-ids 1 --device cuda
  # so are glm4_moe and the rope scalings: computed on the CPU only
  expect cuda_refuses_glm4_moe 1 "glm4_moe" -- "$expertd" generate --model "$fixtures/golden/glm4_moe-bf16" --prompt-ids 1 --device cuda
  expect cuda_refuses_yarn 1 "rope type yarn" -- "$expertd" generate --model "$fixtures/golden/qwen3_moe-yarn-f32" --prompt-ids 1 --device cuda
fi
expect deepseek_generates_on_cpu 0 "," -- "$expertd" generate --model "$fixtures/golden/deepseek_v2-bf16" --prompt-ids 1,2,3 --max-tokens 4
# An eos_token_id outside the vocabulary (transformers only warns): a warning, and generation.
cp -r "$olmoe" "$tmp/eos-model"
echo '{"eos_token_id": [5, 100000]}' >"$tmp/eos-model/generation_config.json"
expect eos_outside_vocab_warns 0 "key 'eos_token_id' holds 100000" -- "$expertd" generate --model "$tmp/eos-model" --prompt-ids 1,2 --max-tokens 3 --ignore-eos
# dynamic NTK's context is max_position_embeddings (8 here) x factor (8)
expect dynamic_context_stretched 0 "," -- "$expertd" generate --model "$fixtures/golden/olmoe-dynamic-f32" --prompt-ids 1 --max-tokens 63 --ignore-eos
expect dynamic_context_limit 2 "context of 64" -- "$expertd" generate --model "$fixtures/golden/olmoe-dynamic-f32" --prompt-ids 1 --max-tokens 64
# One binary for GPU and CPU-only hosts: expertd never links the CUDA libraries; the backend is
# a module it loads for --device cuda only, and a module that cannot load is a clear error.
needed=$(readelf -d "$expertd" | grep NEEDED)
if [ -n "$needed" ] && ! echo "$needed" | grep -qE 'libcudart|libcublas|libcuda\.'; then
  ok binary_needs_no_cuda_libraries
else fail binary_needs_no_cuda_libraries "$needed"; fi
# the CPU backend never touches the module, even when it cannot be found
expect cpu_without_cuda_module 0 "," -- env EXPERTD_CUDA_MODULE=/nonexistent/expertd-cuda.so "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 3 --ignore-eos
if [ "$cuda_module" != none ]; then
  modneeded=$(readelf -d "$cuda_module" | grep NEEDED)
  if echo "$modneeded" | grep -q libcublas && echo "$modneeded" | grep -q libcudart; then
    ok cuda_module_links_cuda
  else fail cuda_module_links_cuda "$modneeded"; fi
  # every engine symbol the module leaves undefined is one the binary exports
  missing=$(comm -23 <(nm -D --undefined-only "$cuda_module" | awk '$2 ~ /^xd_/ {print $2}' | sort -u) \
                     <(nm -D --defined-only "$expertd" | awk '{print $3}' | sort -u))
  nundef=$(nm -D --undefined-only "$cuda_module" | awk '$2 ~ /^xd_/' | wc -l)
  if [ -z "$missing" ] && [ "$nundef" -gt 5 ]; then ok cuda_module_symbols_exported
  else fail cuda_module_symbols_exported "$nundef undefined xd_ symbols; not exported by expertd: $missing"; fi
  expect version_lists_cuda 0 "backends: cpu, cuda" -- "$expertd" version
  # the module's xd_gpu_register reached the binary's backend table: the engine runs the CUDA
  # backend (which generates, or says why the GPU is unusable), not "built without"
  "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 2 --device cuda >"$tmp/reg" 2>&1; rc=$?
  if ! grep -q "built without" "$tmp/reg" && { [ $rc = 0 ] || grep -q "device cuda: no usable GPU" "$tmp/reg"; }
  then ok cuda_module_registers_backend; else fail cuda_module_registers_backend "exit $rc: $(head -c 300 "$tmp/reg")"; fi
  expect cuda_module_missing 1 "device cuda: cannot load /nonexistent/expertd-cuda.so: /nonexistent/expertd-cuda.so: cannot open shared object file" -- env EXPERTD_CUDA_MODULE=/nonexistent/expertd-cuda.so "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
  expect serve_cuda_module_missing 1 "device cuda: cannot load /nonexistent/expertd-cuda.so" -- env EXPERTD_CUDA_MODULE=/nonexistent/expertd-cuda.so timeout 30 "$expertd" serve --model "$olmoe" --port 0 --threads 1 --device cuda
  expect version_without_module 0 "cuda module: unavailable: device cuda: cannot load /nonexistent/expertd-cuda.so" -- env EXPERTD_CUDA_MODULE=/nonexistent/expertd-cuda.so "$expertd" version
  if env EXPERTD_CUDA_MODULE=/nonexistent/expertd-cuda.so "$expertd" version | grep -q '^backends: cpu$'; then ok version_without_module_cpu_only
  else fail version_without_module_cpu_only "$(env EXPERTD_CUDA_MODULE=/nonexistent/expertd-cuda.so "$expertd" version)"; fi
  # a copy of the binary elsewhere (as installed) looks in the library directory, not here
  mkdir -p "$tmp/bin" && cp "$expertd" "$tmp/bin/expertd"
  expect cuda_module_from_libdir 1 "/expertd/expertd-cuda.so: cannot open shared object file" -- env -u EXPERTD_CUDA_MODULE "$tmp/bin/expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
  cp "$cuda_module" "$tmp/bin/"
  expect cuda_module_beside_binary 0 "cuda module: $tmp/bin/expertd-cuda.so" -- env -u EXPERTD_CUDA_MODULE "$tmp/bin/expertd" version
  # a module whose own libraries are missing (a host without libcublas): the loader's reason
  echo 'int xd_missing_dep(void) { return 1; }' >"$tmp/dep.c"
  echo 'int xd_missing_dep(void); void xd_gpu_register(void) { xd_missing_dep(); }' >"$tmp/mod.c"
  cc -shared -fPIC -o "$tmp/libxdgone.so" "$tmp/dep.c" &&
    cc -shared -fPIC -o "$tmp/expertd-cuda.so" "$tmp/mod.c" -L"$tmp" -lxdgone && rm "$tmp/libxdgone.so"
  expect cuda_module_dependency_missing 1 "device cuda: cannot load $tmp/expertd-cuda.so: libxdgone.so: cannot open shared object file" -- env EXPERTD_CUDA_MODULE="$tmp/expertd-cuda.so" "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
  # a module whose registration does not reach this binary's engine (its own engine copy)
  echo 'void xd_gpu_register(void) {}' >"$tmp/noreg.c"
  cc -shared -fPIC -o "$tmp/noreg.so" "$tmp/noreg.c"
  expect cuda_module_registers_nothing 1 "loaded but registered no backend" -- env EXPERTD_CUDA_MODULE="$tmp/noreg.so" "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
  # a shared object that is not an expertd module
  echo 'int xd_not_a_module(void) { return 0; }' >"$tmp/other.c"
  cc -shared -fPIC -o "$tmp/other.so" "$tmp/other.c"
  expect cuda_module_not_ours 1 "is not an expertd CUDA module" -- env EXPERTD_CUDA_MODULE="$tmp/other.so" "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
else
  expect cuda_not_built 1 "built without the CUDA backend" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --device cuda
  expect version_cuda_not_built 0 "cuda module: not built" -- "$expertd" version
fi
expect bad_device 2 "--device" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --device tpu
expect unknown_command 2 "unknown command" -- "$expertd" frobnicate
expect version 0 "expertd" -- "$expertd" version
expect version_names_cpu_kernels 0 "cpu kernels: " -- "$expertd" version

# --record-routing writes a trace that `expertd plan` replays: one step per forward (the prompt,
# then each generated token but the last), every token of them.
"$expertd" generate --model "$olmoe" --prompt-ids 1,2,3,4,5 --max-tokens 12 --ignore-eos \
  --record-routing "$tmp/trace" >/dev/null 2>&1
"$expertd" plan --trace "$tmp/trace" --cache-slots 100000 --json >"$tmp/plan" 2>&1
if python3 - "$tmp/plan" "$olmoe/config.json" <<'PY'
import json, sys
p, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
layers, experts, k = c["num_hidden_layers"], c["num_experts"], c["num_experts_per_tok"]
assert p["steps"] == 12 and p["tokens"] == 5 + 11, p
assert p["cache_slots"] == layers * experts, p  # clamped to every expert
# every expert fits: misses are the cold ones, at most every expert once and at least top_k per layer
assert layers * k <= p["misses"] <= layers * experts, p
assert p["hits"] + p["misses"] >= 12 * layers * k, p  # each step uses >= top_k distinct per layer
assert len(p["layer_hit_rates"]) == layers
PY
then ok record_routing_then_plan; else fail record_routing_then_plan "$(cat "$tmp/plan")"; fi
head -c 100 "$tmp/trace" >"$tmp/cut"
expect plan_truncated_trace 1 "$tmp/cut" -- "$expertd" plan --trace "$tmp/cut" --cache-slots 4
expect plan_bad_policy 2 "lru or predictive" -- "$expertd" plan --trace "$tmp/trace" --cache-slots 4 --policy mru
expect plan_needs_size 2 "--cache-mib" -- "$expertd" plan --trace "$tmp/trace"
# generate records the lookahead predictions, so the recorded predictor has data
expect plan_recorded_predictions 0 "recall" -- "$expertd" plan --trace "$tmp/trace" --cache-slots 4 --predictor recorded
expect plan_sweep 0 "predictive" -- "$expertd" plan --trace "$tmp/trace" --sweep
# Synthetic traces: skewed, correlated routing caches better than uniform routing at half the
# experts, and a cache of every expert misses each expert at most once.
synth_trace=$(dirname "$synth")/xd-synth-trace
"$synth_trace" --out "$tmp/uni" --layers 4 --experts 16 --top-k 2 --steps 300 --zipf 0 --stickiness 0 &&
"$synth_trace" --out "$tmp/skew" --layers 4 --experts 16 --top-k 2 --steps 300 --zipf 1.2 --stickiness 0.6
"$expertd" plan --trace "$tmp/uni" --cache-slots 32 --predictor none --json >"$tmp/pu" 2>&1
"$expertd" plan --trace "$tmp/skew" --cache-slots 32 --predictor none --json >"$tmp/ps" 2>&1
"$expertd" plan --trace "$tmp/skew" --cache-slots 64 --predictor none --json >"$tmp/pf" 2>&1
if python3 - "$tmp/pu" "$tmp/ps" "$tmp/pf" <<'PY'
import json, sys
u, s, f = (json.load(open(p)) for p in sys.argv[1:])
assert s["hit_rate"] > u["hit_rate"] + 0.1, (u["hit_rate"], s["hit_rate"])
assert f["misses"] <= 4 * 16 and f["tokens"] == 300, f
PY
then ok synth_trace_skew_caches_better; else fail synth_trace_skew_caches_better "$(cat "$tmp/pu" "$tmp/ps" | head -c 400)"; fi
expect synth_trace_bad_top_k 2 "--top-k" -- "$synth_trace" --out "$tmp/x" --experts 4 --top-k 8

expect expert_policy_unknown 2 "--expert-policy" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --expert-policy mru
expect expert_cache_both_sizes 2 "give one of the two" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --expert-cache-mib 4 --expert-cache-slots 3
expect record_routing_bad_path 1 "/nonexistent/dir/t" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --record-routing /nonexistent/dir/t

# Traces are private: created 0600, never through a symbolic link, never over an existing file
# without --overwrite (generate and serve).
mode=$(stat -c %a "$tmp/trace")
if [ "$mode" = 600 ]; then ok record_routing_mode_0600; else fail record_routing_mode_0600 "mode $mode"; fi
echo precious >"$tmp/victim"
ln -s "$tmp/victim" "$tmp/link"
expect record_routing_refuses_symlink 1 "$tmp/link: is a symbolic link" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --record-routing "$tmp/link"
expect record_routing_refuses_symlink_overwrite 1 "$tmp/link: is a symbolic link" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --record-routing "$tmp/link" --overwrite
if [ "$(cat "$tmp/victim")" = precious ] && [ -L "$tmp/link" ]; then ok record_routing_symlink_victim_untouched
else fail record_routing_symlink_victim_untouched "victim: $(head -c 40 "$tmp/victim" | od -c | head -2)"; fi
cp "$tmp/trace" "$tmp/trace.before"
expect record_routing_refuses_existing 1 "$tmp/trace: already exists; pass --overwrite" -- "$expertd" generate --model "$olmoe" --prompt-ids 1 --record-routing "$tmp/trace"
if cmp -s "$tmp/trace" "$tmp/trace.before"; then ok record_routing_refused_file_untouched
else fail record_routing_refused_file_untouched "the refused trace changed"; fi
chmod 644 "$tmp/trace"
expect record_routing_overwrite 0 "" -- "$expertd" generate --model "$olmoe" --prompt-ids 1,2 --max-tokens 2 --record-routing "$tmp/trace" --overwrite
expect record_routing_overwrite_plan 0 '"steps": 2' -- "$expertd" plan --trace "$tmp/trace" --cache-slots 4 --json
mode=$(stat -c %a "$tmp/trace")
if [ "$mode" = 600 ]; then ok record_routing_overwrite_mode_0600; else fail record_routing_overwrite_mode_0600 "mode $mode"; fi
# serve refuses an existing trace at start (exit 1) and replaces it with overwrite = true
expect serve_record_routing_refuses_existing 1 "pass --overwrite" -- timeout 30 "$expertd" serve --model "$olmoe" --port 0 --threads 1 --record-routing "$tmp/trace.before"
"$expertd" serve --model "$olmoe" --port 0 --threads 1 --record-routing "$tmp/trace.before" --overwrite 2>"$tmp/serve.err" &
pid=$!
for _ in $(seq 300); do grep -q "ready" "$tmp/serve.err" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
kill -INT $pid 2>/dev/null
wait $pid
rc=$?
mode=$(stat -c %a "$tmp/trace.before")
if [ $rc = 0 ] && [ "$mode" = 600 ] && ! cmp -s "$tmp/trace.before" "$tmp/trace" && grep -q ready "$tmp/serve.err"
then ok serve_record_routing_overwrite; else fail serve_record_routing_overwrite "exit $rc, mode $mode: $(tail -3 "$tmp/serve.err")"; fi

# serve sizes KV blocks by what the model stores per token: deepseek_v3-f32 keeps its latent (32)
# and rotary key (8) per layer (3): 1 MiB / (3 x 40 floats x 16 tokens x 4 B) = 136 blocks (a
# plain cache of its 4 heads x (24 + 20) would give 62, K and V of head_dim 8 would give 85)
"$expertd" serve --model "$fixtures/golden/deepseek_v3-f32" --port 0 --threads 1 --kv-memory 1 2>"$tmp/serve-ds.err" &
pid=$!
for _ in $(seq 300); do grep -q "ready" "$tmp/serve-ds.err" && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
url=$(sed -n 's|.*listening on \(http://[^ ]*\).*|\1|p' "$tmp/serve-ds.err" | head -1)
blocks=$(python3 -c "import sys,urllib.request;t=urllib.request.urlopen(sys.argv[1]+'/metrics',timeout=10).read().decode();print([l.split()[1] for l in t.splitlines() if l.startswith('expertd_kv_cache_blocks ')][0])" "$url" 2>&1)
kill -INT $pid 2>/dev/null
wait $pid
if [ "$blocks" = 136 ]; then ok serve_kv_blocks_sized_by_mla_latent
else fail serve_kv_blocks_sized_by_mla_latent "expertd_kv_cache_blocks $blocks ($url): $(tail -3 "$tmp/serve-ds.err")"; fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
