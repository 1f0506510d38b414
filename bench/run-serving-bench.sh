#!/usr/bin/env bash
# Serving benchmark on the CPU: expertd against llama.cpp's OpenAI-compatible server
# (llama-cpp-python[server]) on the same model, same machine, same run, same thread count.
#
#   bench/run-serving-bench.sh [--model DIR] [--threads N] [--concurrency "1 8 32"]
#       [--prompt-words N] [--output-tokens N] [--outtype bf16|f32|f16]
#       [--out bench/results/serving-cpu.md] [--no-llama]
#
# What it does:
#  1. the model: --model, else models/demo-moe when present, else a synthetic OLMoE made by
#     xd-synth-model with the qwen2 fixture tokenizer (build/bench-models/serving-synth);
#  2. venvs: build/http-venv (tools/test-venv.sh: the pinned openai SDK) for the clients;
#     .venv-llama for llama-cpp-python[server] and gguf (made when missing: pip builds llama.cpp
#     from source, CPU only, niced; 30-60 minutes on 2 cores);
#  3. converts the checkpoint to GGUF with bench/hf_to_gguf_olmoe.py (--outtype, default bf16:
#     the checkpoint's own bits);
#  4. starts both servers on free loopback ports with the same --threads, checks greedy
#     agreement (bench/compare_greedy.py), then for each concurrency runs bench/loadgen.py
#     against expertd, then against llama.cpp (never both under load at once; interleaved so
#     that drift in the shared machine's load hits both);
#  5. writes the markdown (bench/serving_report.py) with machine, load, versions and command.
# Run directory with every JSON: build/serving-bench/<date>/.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
cmdline="bench/run-serving-bench.sh $*"

model="" threads=1 concurrency="1 8 32" prompt_words="" output_tokens=64 outtype=bf16
out=bench/results/serving-cpu.md no_llama=0
while [ $# -gt 0 ]; do
  case $1 in
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --prompt-words) prompt_words=$2; shift 2 ;;
    --output-tokens) output_tokens=$2; shift 2 ;;
    --outtype) outtype=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --no-llama) no_llama=1; shift ;;
    -h|--help) sed -n 2,24p "$0"; exit 0 ;;
    *) echo "run-serving-bench: unknown option $1" >&2; exit 2 ;;
  esac
done

[ -x build/daemon/expertd ] || { echo "run-serving-bench: build expertd first (tools/bootstrap.sh)" >&2; exit 1; }
run=build/serving-bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run"
notes=()

# 1. The model.
if [ -z "$model" ]; then
  if [ -f models/demo-moe/config.json ]; then
    model=models/demo-moe
  else
    model=build/bench-models/serving-synth
    if [ ! -f "$model/model.safetensors" ]; then
      build/tools/xd-synth-model --out "$model" --vocab 602 --hidden 512 --layers 8 --heads 8 \
        --kv-heads 8 --experts 32 --top-k 4 --ffn 256 --max-pos 4096 --seed 1 >/dev/null
      cp tests/fixtures/tokenizers/qwen2/tokenizer.json tests/fixtures/chat/qwen2_moe/tokenizer_config.json "$model/"
    fi
  fi
fi
name=$(basename "$model")
# EOS ids of config.json, generation_config.json and tokenizer_config.json's eos_token, and every
# special added token: banned (logit_bias -100) in every request so that both servers generate
# exactly max_tokens.
ban=$(python3 - "$model" <<'EOF'
import json, os, sys
d = sys.argv[1]
ids = set()
def load(n):
    p = os.path.join(d, n)
    return json.load(open(p, encoding="utf-8")) if os.path.exists(p) else {}
for cfg in (load("config.json"), load("generation_config.json")):
    e = cfg.get("eos_token_id")
    ids.update(e if isinstance(e, list) else ([e] if e is not None else []))
tc, tj = load("tokenizer_config.json"), load("tokenizer.json")
e = tc.get("eos_token")
if isinstance(e, dict):
    e = e.get("content")
for at in tj.get("added_tokens", []):
    # the eos token, and every special token: llama.cpp ends generation on some by their text
    # alone (<|endoftext|>, <|im_end|>, ...) where transformers and expertd do not
    if at["content"] == e or at.get("special"):
        ids.add(at["id"])
print(" ".join(str(i) for i in sorted(ids)))
EOF
)
ban_args=()
for t in $ban; do ban_args+=(--ban-token "$t"); done
if [ -z "$prompt_words" ]; then
  # about 128 prompt tokens: the qwen2 fixture tokenizer (600 ids) splits a word into ~3.7 tokens
  if [ "$model" = build/bench-models/serving-synth ]; then prompt_words=34; else prompt_words=96; fi
fi

# 2. Venvs.
py=$(tools/test-venv.sh "$src")
lpy=.venv-llama/bin/python
if [ $no_llama = 0 ] && ! "$lpy" -c 'import llama_cpp, llama_cpp.server, gguf' 2>/dev/null; then
  echo "run-serving-bench: building llama-cpp-python[server] in .venv-llama (llama.cpp from source, CPU; long on 2 cores)" >&2
  [ -x "$lpy" ] || python3 -m venv .venv-llama
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) nice -n 10 .venv-llama/bin/pip install -q 'llama-cpp-python[server]' gguf \
    || { notes+=("llama-cpp-python could not be installed (pip failed; see the terminal); expertd only."); no_llama=1; }
fi

# 3. GGUF.
gguf_path=build/bench-models/$name-$outtype.gguf
if [ $no_llama = 0 ]; then
  if [ ! -f "$gguf_path" ] || [ "$gguf_path" -ot "$model/model.safetensors" ]; then
    mkdir -p build/bench-models
    "$lpy" bench/hf_to_gguf_olmoe.py "$model" "$gguf_path" --outtype "$outtype" \
      || { notes+=("The GGUF conversion failed (see the terminal); expertd only."); no_llama=1; }
  fi
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_up() { # URL PID LOG
  for _ in $(seq 1 600); do
    if curl -sf "$1/v1/models" >/dev/null 2>&1; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "run-serving-bench: server died:" >&2; tail -20 "$3" >&2; return 1; }
    sleep 0.2
  done
  return 1
}

# 4. Servers.
xport=$(free_port)
build/daemon/expertd serve --model "$model" --port "$xport" --threads "$threads" \
  --log-level warn >"$run/expertd.log" 2>&1 &
pids+=($!)
xurl=http://127.0.0.1:$xport
wait_up "$xurl" "${pids[-1]}" "$run/expertd.log"
ctx=$(python3 -c "import json; print(min(4096, json.load(open('$model/config.json'))['max_position_embeddings']))")
lurl=""
if [ $no_llama = 0 ]; then
  lport=$(free_port)
  "$lpy" -m llama_cpp.server --model "$gguf_path" --model_alias "$name" --host 127.0.0.1 \
    --port "$lport" --n_threads "$threads" --n_threads_batch "$threads" --n_ctx "$ctx" \
    --n_batch 512 --interrupt_requests false >"$run/llamacpp.log" 2>&1 &
  pids+=($!)
  lurl=http://127.0.0.1:$lport
  if ! wait_up "$lurl" "${pids[-1]}" "$run/llamacpp.log"; then
    notes+=("llama-cpp-python's server did not start on the GGUF: $(grep -iE 'error|exception' "$run/llamacpp.log" | tail -3 | tr '\n' ' ')")
    no_llama=1; lurl=""
  fi
fi

if [ -n "$lurl" ]; then
  "$py" bench/compare_greedy.py --a-url "$xurl/v1" --a-model "$name" --a-label expertd \
    --b-url "$lurl/v1" --b-model "$name" --b-label llama.cpp --max-tokens 32 "${ban_args[@]}" \
    --b-extra-body '{"repeat_penalty": 1.0}' \
    --out "$run/greedy.json" || notes+=("compare_greedy.py failed.")
fi

loads=()
for c in $concurrency; do
  n=$(( c * 2 > 8 ? c * 2 : 8 ))
  common=(--model "$name" --concurrency "$c" --num-requests "$n" --duration 90 --warmup 2
          --prompt-tokens "$prompt_words" --output-tokens "$output_tokens" --temperature 0
          --seed 1 "${ban_args[@]}")
  loads+=("c=$c before: $(cut -d' ' -f1-3 /proc/loadavg)")
  "$py" bench/loadgen.py --base-url "$xurl/v1" --include-usage "${common[@]}" --out "$run/expertd-c$c.json" \
    || notes+=("loadgen against expertd at concurrency $c failed.")
  if [ -n "$lurl" ]; then
    "$py" bench/loadgen.py --base-url "$lurl/v1" "${common[@]}" --extra-body '{"repeat_penalty": 1.0}' \
      --out "$run/llamacpp-c$c.json" \
      || notes+=("loadgen against llama.cpp at concurrency $c failed.")
  fi
done
loads+=("after: $(cut -d' ' -f1-3 /proc/loadavg)")

# 5. Report.
export RUN="$run" MODEL="$model" GGUF="$gguf_path" OUTTYPE="$outtype" THREADS="$threads" \
  CONC="$concurrency" PWORDS="$prompt_words" OTOK="$output_tokens" CMDLINE="$cmdline" BAN="$ban" \
  LOADS="$(printf '%s; ' "${loads[@]}")" NOTES="$(printf '%s\n' "${notes[@]+"${notes[@]}"}")" \
  HAVE_LLAMA="$([ -n "$lurl" ] && echo 1 || echo 0)"
"$py" - <<'EOF'
import json, os, subprocess
E = os.environ
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception:
        return ""
lscpu = sh("lscpu | grep -m1 'Model name' | cut -d: -f2").strip()
avx = "AVX-512" if "avx512f" in sh("grep -m1 flags /proc/cpuinfo") else "AVX2, no AVX-512"
mem = sh("free -g | awk '/Mem:/ {print $2}'")
cfg = json.load(open(os.path.join(E["MODEL"], "config.json")))
meta = {
    "date": sh("date -u +%Y-%m-%dT%H:%MZ"),
    "machine": f"{lscpu}, {sh('nproc')} cores visible ({avx}), {mem} GiB RAM, shared with other work",
    "load": "load average (1/5/15 min) " + E["LOADS"],
    "model": (f"{E['MODEL']}: {cfg['model_type']}, hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
              f"{cfg['num_attention_heads']} heads, {cfg['num_experts']} experts top-{cfg['num_experts_per_tok']}, "
              f"ffn {cfg['intermediate_size']}, vocab {cfg['vocab_size']}, {cfg.get('torch_dtype', cfg.get('dtype'))}"),
    "gguf": (f"{E['GGUF']} ({E['OUTTYPE']}; norms and router F32) by bench/hf_to_gguf_olmoe.py"
             if E["HAVE_LLAMA"] == "1" else "not used"),
    "workload": f"closed loop; prompts of {E['PWORDS']} random words (same seeded prompts for both), "
                f"max_tokens {E['OTOK']}, temperature 0, EOS and special token ids {E['BAN']} banned by logit_bias; "
                f"requests per run max(8, 2 x concurrency) after 2 warm-up requests; completions endpoint, streamed",
    "threads": f"{E['THREADS']} for each server (expertd --threads; llama.cpp n_threads and n_threads_batch)",
    "expertd": f"commit {sh('git rev-parse --short HEAD')}{' (dirty tree)' if sh('git status --porcelain --untracked-files=no') else ''}, "
               f"{sh('build/daemon/expertd version | head -1')}",
    "openai_sdk": sh("build/http-venv/bin/python -c 'import openai; print(openai.__version__)'"),
    "concurrency": [int(c) for c in E["CONC"].split()],
    "command": E["CMDLINE"],
    "notes": [n for n in E["NOTES"].split("\n") if n.strip()],
}
if E["HAVE_LLAMA"] == "1":
    meta["notes"] += [
        "How to read the concurrency rows: llama-cpp-python's server holds one `Llama` object "
        "behind a lock and runs one request at a time (started here with "
        "`--interrupt_requests false`; its default, true, ends the running stream when another "
        "request arrives); the others wait in its queue, so their TTFT includes that wait. expertd "
        "batches all running sequences in each step (continuous batching). llama.cpp's own "
        "`llama-server` binary (parallel slots, `-np`) is not what llama-cpp-python ships.",
        "Numerics: expertd computes in f32 with bf16 weights widened exactly; llama.cpp's CPU "
        "matmul for BF16 weights rounds the activations to bf16 first (`vec_dot_type` BF16), so "
        "greedy continuations of the two may part where two logits are close.",
        "llama-cpp-python's completions default to repeat_penalty 1.1 (not an OpenAI parameter); "
        "every request to it here sends repeat_penalty 1.0 so that temperature 0 is plain greedy "
        "decoding as in expertd (with 1.1 the continuations part after a token or two).",
    ]
    meta["llama_cpp_python"] = sh(".venv-llama/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)'")
    meta["llama_cpp"] = sh(".venv-llama/bin/python -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())'")
# prompt tokens as expertd counted them
for c in meta["concurrency"]:
    try:
        s = json.load(open(f"{E['RUN']}/expertd-c{c}.json"))["summary"]
        if s.get("prompt_tokens_total"):
            meta["workload"] += f"; prompt tokens per request {s['prompt_tokens_total'] / s['prompt_tokens_reported_by_server']:.0f} (expertd's usage)"
            break
    except Exception:
        pass
json.dump(meta, open(f"{E['RUN']}/meta.json", "w"), indent=2)
EOF
"$py" bench/serving_report.py "$run" "$out"
echo "run-serving-bench: wrote $out (run directory $run)" >&2
