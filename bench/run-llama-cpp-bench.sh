#!/usr/bin/env bash
# llama.cpp against expertd on the CPU, side by side in one run (issue 14): builds llama-bench,
# llama-batched-bench, llama-server, llama-quantize and llama-perplexity from the llama.cpp source that
# llama-cpp-python's sdist vendors (outside the repo; llama.cpp's code is never committed),
# converts the synthetic OLMoE-shaped model (--family olmoe, the default) or DeepSeek-V2-Lite-shaped
# model (--family deepseek, issue 16) to GGUF with bench/hf_to_gguf_olmoe.py or
# bench/hf_to_gguf_deepseek.py, and runs both engines in alternation, evicting the other engine's
# model file from the page cache first.
#
# Usage: bench/run-llama-cpp-bench.sh [--build-only] [--family olmoe|deepseek] [--rounds N]
#            [--repeats N] [--threads N] [--prompt-len N] [--decode-steps N]
#            [--model-args "xd-synth-model args"] [--name NAME] [--quant] [--check]
#            [--formats "XD:GGUF ..."] [--kv-dtype f32|bf16|f16]
#   --kv-dtype: expertd's KV cache element (default f32; llama.cpp's own default, which it runs
#   with here, is f16)
#   --formats: the pairs compared, expertd's --quantize against llama.cpp's GGUF type, each
#   pair in every round (default "none:bf16"; e.g. "none:bf16 q8:Q8_0 q4:Q4_K_M"); a quantized
#   GGUF type implies --quant (llama-quantize makes it from the bf16 GGUF)
#   --check: first compare greedy ids (compare_llama_greedy_ids.py, llama-server) on a small f32
#   model of the family (strict: both engines in f32) and on the benchmark model; stops on a
#   mismatch of the f32 one
#   --family deepseek: the model of bench/run-deepseek-bench.sh (V2-Lite's layer shapes, LAYERS
#   decoder layers, default 4), 16 decode steps unless --decode-steps says otherwise
#   (after tools/bootstrap.sh and ninja -C build)
# Environment: LLAMA_CPP_DIR (default /work/llama-cpp): the sdist, the build and the GGUF files;
#   a second run reuses the build. GOLDEN_VENV (default /work/golden-venv): a venv with numpy,
#   pyyaml and tqdm for the converter (gguf-py comes from the sdist's source via PYTHONPATH).
#   LLAMA_BUILD (default $LLAMA_CPP_DIR/build): another build of the same source to run instead,
#   e.g. one configured with -DGGML_NATIVE=OFF -DGGML_AVX512=OFF for the AVX2 comparison (run
#   with EXPERTD_CPU_KERNEL=avx2 so expertd takes its AVX2 path too); it must exist already.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
ldir=${LLAMA_CPP_DIR:-/work/llama-cpp}
build_only=0 rounds=3 repeats=3 threads=2 quant=0 check=0 family=olmoe prompt_len=128 decode_steps=
name= model_args= formats=none:bf16 kv_dtype=f32
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1 ;;
    --family) family=$2; shift ;;
    --prompt-len) prompt_len=$2; shift ;;
    --decode-steps) decode_steps=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --repeats) repeats=$2; shift ;;  # each engine's own repetitions within a round
    --threads) threads=$2; shift ;;
    --model-args) model_args=$2; shift ;;
    --name) name=$2; shift ;;
    --quant) quant=1 ;;
    --check) check=1 ;;
    --formats) formats=$2; shift ;;
    --kv-dtype) kv_dtype=$2; shift ;;  # expertd's KV cache element (llama.cpp's is f16)
    *) echo "run-llama-cpp-bench.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
case "$family" in
  olmoe)
    converter=bench/hf_to_gguf_olmoe.py
    check_args="--vocab 4096 --hidden 256 --layers 2 --heads 4 --kv-heads 4 --experts 8 --top-k 2 --ffn 128 --seed 7"
    : "${name:=olmoe-1024-mha}" "${decode_steps:=32}"
    : "${model_args:=--vocab 32000 --hidden 1024 --layers 8 --heads 16 --kv-heads 16 --experts 32 --top-k 4 --ffn 512 --max-pos 4096 --seed 1}" ;;
  deepseek)
    # bench/run-deepseek-bench.sh's model (the same directory, so either script makes it once)
    converter=bench/hf_to_gguf_deepseek.py
    check_args="--arch deepseek_v2 --vocab 4096 --hidden 512 --layers 3 --heads 4 --experts 16 --top-k 6 --ffn 128 --kv-lora 512 --q-lora 0 --nope 128 --rope-dim 64 --v-dim 128 --shared 2 --dense-layers 1 --dense-ffn 1024 --seed 7"
    layers=${LAYERS:-4}
    : "${name:=deepseek-v2-lite-${layers}l}" "${decode_steps:=16}"
    : "${model_args:=--arch deepseek_v2 --vocab 102400 --hidden 2048 --layers $layers --heads 16 --experts 64 --top-k 6 --ffn 1408 --kv-lora 512 --q-lora 0 --nope 128 --rope-dim 64 --v-dim 128 --shared 2 --dense-layers 1 --dense-ffn 10944 --max-pos 4096 --seed 1}" ;;
  *) echo "run-llama-cpp-bench.sh: --family is olmoe or deepseek, not '$family'" >&2; exit 2 ;;
esac

# --- 1. llama.cpp from the sdist, built once ---------------------------------------------------
for pair in $formats; do
  case "${pair#*:}" in bf16) ;; Q8_0|Q4_K_M) quant=1 ;;
    *) echo "run-llama-cpp-bench.sh: --formats pairs are XD:GGUF with GGUF bf16, Q8_0 or Q4_K_M, not '$pair'" >&2; exit 2 ;;
  esac
done
bin=${LLAMA_BUILD:-$ldir/build}/bin
if [ -n "${LLAMA_BUILD:-}" ] && [ ! -x "$bin/llama-bench" ]; then
  echo "run-llama-cpp-bench.sh: LLAMA_BUILD=$LLAMA_BUILD has no bin/llama-bench" >&2; exit 2
fi
targets="llama-bench llama-batched-bench llama-server llama-quantize llama-perplexity"
need_build=0  # built together; a run needs only the two benchmarks (and llama-quantize for --quant)
for t in llama-bench llama-batched-bench $( [ $quant = 1 ] && echo llama-quantize ) \
         $( [ $check = 1 ] && echo llama-server ); do
  [ -x "$bin/$t" ] || need_build=1
done
if [ $need_build = 1 ] && [ -z "${LLAMA_BUILD:-}" ]; then
  mkdir -p "$ldir/sdist"
  sd=$(ls "$ldir"/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | head -n1 || true)
  if [ -z "$sd" ]; then
    pip download --no-binary :all: --no-deps llama-cpp-python -d "$ldir/sdist"
    sd=$(ls "$ldir"/sdist/llama_cpp_python-*.tar.gz | head -n1)
  fi
  src=$ldir/src
  if [ ! -f "$src/CMakeLists.txt" ]; then
    rm -rf "$ldir/unpack" && mkdir -p "$ldir/unpack"
    tar -xzf "$sd" -C "$ldir/unpack"
    rm -rf "$src" && mv "$ldir"/unpack/llama_cpp_python-*/vendor/llama.cpp "$src"
    basename "$sd" > "$src/.from-sdist"
    rm -rf "$ldir/unpack"
  fi
  cmake -S "$src" -B "$ldir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF
  cmake --build "$ldir/build" --target $targets -j2
fi
echo "llama.cpp: $(cat "$ldir/src/.from-sdist" 2>/dev/null || echo '?'), build $("$bin/llama-bench" --version 2>&1 | head -n2 | tr '\n' ' ')" >&2
[ $build_only = 1 ] && exit 0

# --- 2. the model: synthetic OLMoE or DeepSeek-V2-Lite shapes, then GGUF ----------------------
# llama.cpp's OLMoE graph normalises q and k over the full width, so the OLMoE model has as many
# KV heads as heads (hf_to_gguf_olmoe.py refuses anything else).
model=$repo/build/bench-models/$name
if [ ! -f "$model/model.safetensors" ]; then
  build/tools/xd-synth-model --out "$model" $model_args
fi
# the synthetic checkpoint has no tokenizer; llama.cpp's loader needs one (bench prompts are
# random ids either way): the OLMoE fixture's, its ids padded to the vocabulary by the converter
[ -f "$model/tokenizer.json" ] || cp tests/fixtures/tokenizers/olmoe/tokenizer.json \
  tests/fixtures/tokenizers/olmoe/tokenizer_config.json "$model/"
py=${GOLDEN_VENV:-/work/golden-venv}/bin/python
gguf_bf16=$ldir/models/$name-bf16.gguf
mkdir -p "$ldir/models"
if [ ! -f "$gguf_bf16" ]; then
  PYTHONPATH=$ldir/src/gguf-py "$py" "$converter" "$model" "$gguf_bf16.tmp" --outtype bf16
  mv "$gguf_bf16.tmp" "$gguf_bf16"
fi
if [ $quant = 1 ]; then
  for q in Q8_0 Q4_K_M; do
    f=$ldir/models/$name-$q.gguf
    qbin=$bin/llama-quantize; [ -x "$qbin" ] || qbin=$ldir/build/bin/llama-quantize
    [ -f "$f" ] || { "$qbin" "$gguf_bf16" "$f.tmp" $q > "$f.quantize.log" 2>&1 && mv "$f.tmp" "$f"; }
  done
fi

if [ $check = 1 ]; then
  small=$repo/build/bench-models/$family-check-f32
  [ -f "$small/model.safetensors" ] || build/tools/xd-synth-model --out "$small" --f32 $check_args
  cp tests/fixtures/tokenizers/olmoe/tokenizer.json tests/fixtures/tokenizers/olmoe/tokenizer_config.json "$small/"
  gsmall=$ldir/models/$family-check-f32.gguf
  [ -f "$gsmall" ] || PYTHONPATH=$ldir/src/gguf-py "$py" "$converter" "$small" "$gsmall" --outtype f32
  mkdir -p "$ldir/results"
  check_rc=0
  "$py" bench/compare_llama_greedy_ids.py --model "$small" --gguf "$gsmall" --threads "$threads" \
    --llama-server "$bin/llama-server" --id-limit 4000 --prompts 4 --max-tokens 16 \
    > "$ldir/results/$family-check-f32.json" || check_rc=$?
  "$py" -c 'import json,sys; print("greedy check, f32:", json.load(open(sys.argv[1]))["total"])' \
    "$ldir/results/$family-check-f32.json" >&2
  if [ $check_rc != 0 ]; then
    echo "greedy check failed on the f32 model: see $ldir/results/$family-check-f32.json" >&2
    exit 1
  fi
  "$py" bench/compare_llama_greedy_ids.py --model "$model" --gguf "$gguf_bf16" --threads "$threads" \
    --llama-server "$bin/llama-server" --prompts 2 --max-tokens 8 > "$ldir/results/$name-check-bf16.json" || true
  "$py" -c 'import json,sys
try: t = json.load(open(sys.argv[1]))["total"]
except ValueError: t = "no result (see the error above)"
print("greedy check, bf16 (llama.cpp rounds activations to bf16):", t)' "$ldir/results/$name-check-bf16.json" >&2
fi

# --- 3. alternate the engines, each after evicting the other's file from the page cache --------
evict() { # fsync then POSIX_FADV_DONTNEED: the pages leave the cache unless someone maps them
  python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
out=$ldir/results/$name-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
{
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o 'avx2\|fma\|f16c\|avx512[a-z_0-9]*\|amx[a-z_0-9]*\|avx_vnni' | sort -u | tr '\n' ' ')"
  echo "kernel: $(uname -r); gcc: $(gcc -dumpfullversion); expertd: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
  echo "llama.cpp: $(cat "$ldir/src/.from-sdist" 2>/dev/null), $("$bin/llama-bench" --version 2>&1 | head -n1)"
  echo "expertd kernels: $(build/daemon/expertd version 2>/dev/null | grep -i 'cpu kernels' || true)"
  echo "expertd KV cache: $kv_dtype (--kv-dtype; llama.cpp's default, used here, is f16)"
} | tee "$out/machine.txt" >&2

# llama.cpp's repacked (AMX / AVX-512 interleaved) path, once: it dies with SIGILL where the
# kernel withholds AMX from the process
repack=0
if "$bin/llama-bench" -m "$gguf_bf16" -t "$threads" -p 16 -n 4 -r 1 --repack 1 -o json \
     > "$out/repack1-probe.json" 2> "$out/repack1-probe.err"; then
  echo "llama-bench --repack 1: ran (see $out/repack1-probe.json); measured with --repack 0" >&2
else
  rc=$?
  echo "llama-bench --repack 1: failed, exit $rc$( [ $rc -eq 132 ] && echo ' (SIGILL)'); measured with --repack 0" >&2
  echo "exit $rc" >> "$out/repack1-probe.err"
fi

for r in $(seq 1 "$rounds"); do
  for pair in $formats; do
    xq=${pair%%:*} gq=${pair#*:}
    gguf=$ldir/models/$name-$gq.gguf; [ "$gq" = bf16 ] && gguf=$gguf_bf16
    tag=$xq; [ "$pair" = none:bf16 ] && tag=  # the bf16 pair keeps the old file names
    echo "round $r/$rounds: expertd --quantize $xq (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/load.txt" >&2
    evict "$gguf"
    build/bench/bench-engine --model "$model" --quantize "$xq" --threads "$threads" --kv-dtype "$kv_dtype" \
      --prompt-len "$prompt_len" --decode-steps "$decode_steps" --max-batch 8 --repeats "$repeats" \
      > "$out/expertd$tag-$r.json"
    echo "round $r/$rounds: llama.cpp $gq (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/load.txt" >&2
    evict "$model/model.safetensors" $(ls "$model"/expertd-*.pack 2>/dev/null || true)
    "$bin/llama-bench" -m "$gguf" -t "$threads" -p "$prompt_len" -n "$decode_steps" -r "$repeats" \
      --repack $repack -o json > "$out/llama-bench$tag-$r.json" 2> "$out/llama-bench$tag-$r.err"
    "$bin/llama-batched-bench" -m "$gguf" -t "$threads" -c 2048 -b 2048 -ub 512 -npp "$prompt_len" \
      -ntg "$decode_steps" -npl 1,8 --no-repack --output-format jsonl > "$out/batched$tag-$r.jsonl" \
      2> "$out/batched$tag-$r.err"
  done
done
# llama.cpp's KV cache as its log states it (batched-bench prints llama's log only with -v)
"$bin/llama-batched-bench" -m "$gguf_bf16" -t "$threads" -c 2048 -b 2048 -ub 512 -npp 8 -ntg 1 -npl 1 \
  --no-repack -v > "$out/kv-log.txt" 2>&1 || true
"$py" - "$out" "$rounds" "$prompt_len" "$decode_steps" $formats <<'PY' | tee "$out/summary.md"
import json, re, statistics, sys
out, rounds, pp, tg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
num = lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}"  # decode of the DeepSeek shape is < 1 tok/s
for pair in sys.argv[5:]:
    xq, gq = pair.split(":")
    tag = "" if pair == "none:bf16" else xq  # the files of one pair: expertd{tag}-{round}.json ...
    keys = ("xd_pp1", "xd_pp8", "xd_tg1", "xd_tg8", "lb_pp", "lb_tg", "bb_pp1", "bb_tg1", "bb_pp8",
            "bb_tg8", "gbps")
    rows = {k: [] for k in keys}
    for r in range(1, rounds + 1):
        x = json.load(open(f"{out}/expertd{tag}-{r}.json"))
        rows["gbps"].append(x["baseline_gbps"])
        for res in x["results"]:
            b = res["batch"]
            rows[f"xd_pp{b}"].append(res["prefill_tokens_per_s"])
            rows[f"xd_tg{b}"].append(res["decode_tokens_per_s"])
        for t in json.load(open(f"{out}/llama-bench{tag}-{r}.json")):
            rows["lb_pp" if t["n_prompt"] else "lb_tg"].append(t["avg_ts"])
        for line in open(f"{out}/batched{tag}-{r}.jsonl"):
            if not line.startswith("{"):
                continue
            t = json.loads(line)
            rows[f"bb_pp{t['pl']}"].append(t["speed_pp"])
            rows[f"bb_tg{t['pl']}"].append(t["speed_tg"])
    med = {k: statistics.median(v) if v else float("nan") for k, v in rows.items()}
    fmt = lambda k: ", ".join(num(v) for v in rows[k])
    print(f"\n### expertd --quantize {xq} against llama.cpp {gq}\n")
    print(f"rounds: {rounds}; expertd stream rate GB/s: {fmt('gbps')}\n")
    print("| | expertd (bench-engine) | llama.cpp | expertd / llama.cpp |")
    print("| --- | --- | --- | --- |")
    for label, a, b in ((f"prefill b1 (llama-bench pp{pp})", "xd_pp1", "lb_pp"),
                        (f"decode b1 (llama-bench tg{tg})", "xd_tg1", "lb_tg"),
                        ("prefill b1 (batched-bench npl 1)", "xd_pp1", "bb_pp1"),
                        ("decode b1 (batched-bench npl 1)", "xd_tg1", "bb_tg1"),
                        ("prefill b8 (batched-bench npl 8)", "xd_pp8", "bb_pp8"),
                        ("decode b8 (batched-bench npl 8)", "xd_tg8", "bb_tg8")):
        print(f"| {label} | {num(med[a])} ({fmt(a)}) | {num(med[b])} ({fmt(b)}) | {med[a] / med[b]:.2f}x |")
    print(f"\nexpertd kv_bytes_per_token: {x.get('kv_bytes_per_token')}")
# KV cache per token: what llama.cpp's log says it allocated
for line in open(f"{out}/kv-log.txt", errors="replace"):
    if re.search(r"llama_kv_cache: size|llama_context: n_ctx +=", line):
        print("llama.cpp: " + line.strip())  # size / n_ctx cells is the bytes per token
PY
echo "results in $out" >&2
