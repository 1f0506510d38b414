#!/usr/bin/env bash
# Perplexity of one model in expertd and in llama.cpp, side by side (issue 15, quality): the
# checkpoint converted to GGUF (bench/hf_to_gguf_olmoe.py, f32 by default: the bf16 weights
# widened exactly, which is what expertd's CPU backend computes with), Q8_0 and Q4_K_M made from
# it by llama-quantize, llama-perplexity on each, and `expertd perplexity` for each expertd
# format, on the same text with the same --ctx; then a table of each format's perplexity and its
# change against its own engine's full precision, and the issue's two goals checked.
#
# Before trusting the comparison it checks that both engines score the same windows: the token
# ids llama-perplexity scored (dumped with --kl-divergence-base on the full-precision run) against
# Hugging Face tokenizers' encoding of the same text (the golden venv), expertd's token count
# against both, whether either adds a BOS, and the number of windows; a mismatch stops the run.
#
# Usage: bench/run-perplexity-vs-llama.sh [--model DIR] [--formats "none q8 q4"]
#            [--llama-types "Q8_0 Q4_K_M"] [--runs "CTX:FILE ..."] [--heldout FILE]
#            [--outtype f32|bf16] [--threads N] [--name NAME] [--out FILE.md]
#   --model: an OLMoE checkpoint with its tokenizer.json (default models/demo-moe)
#   --formats: expertd's --quantize values, "none" first (its full precision; default "none q8
#     q4"; q4k and the like when expertd has them); also FORMATS in the environment
#   --llama-types: llama-quantize types made from the full-precision GGUF (default "Q8_0 Q4_K_M
#     Q4_K_M:f32:q8_0"); TYPE:EMB:OUT adds llama-quantize's --token-embedding-type EMB and
#     --output-tensor-type OUT (Q4_K_M:f32:q8_0 quantizes what expertd's q4 quantizes: the
#     embedding kept, lm_head in q8); BF16 is the --outtype bf16 conversion, not quantized
#     (llama.cpp then rounds activations to bf16 in its matmuls)
#   --runs: the (ctx, text) pairs. Default for the demo model: 128 on
#     tests/fixtures/demo-moe/heldout-16k.txt, and 512 on the first 32768 bytes of the demo
#     corpus's heldout.txt (from --heldout FILE, else made by tools/demo_model/corpus.py under
#     $LLAMA_CPP_DIR/demo-corpus, apt-get download of three Debian packages; its first 16000
#     bytes must equal the fixture, so it is the same held-out text)
#   --out: also write the table there (default: only into the results directory)
# Environment: LLAMA_CPP_DIR (default /work/llama-cpp: its build/bin/llama-perplexity and
#   llama-quantize, made by bench/run-llama-cpp-bench.sh --build-only; the GGUF files go to
#   $LLAMA_CPP_DIR/models, the logs to $LLAMA_CPP_DIR/results); GOLDEN_VENV (default
#   /work/golden-venv: numpy, tokenizers; gguf from llama.cpp's gguf-py);
#   LLAMA_PPL_ARGS (default "-ctk f32 -ctv f32 -fa off": the KV cache in f32 and attention
#   unfused, as expertd's CPU backend computes; llama.cpp's defaults, an f16 KV cache and flash
#   attention, move the demo model's PPL by 2e-5 relative)
# (after ninja -C build)
set -euo pipefail
cd "$(dirname "$0")/.."
ldir=${LLAMA_CPP_DIR:-/work/llama-cpp}
bin=$ldir/build/bin
py=${GOLDEN_VENV:-/work/golden-venv}/bin/python
llama_args=${LLAMA_PPL_ARGS:--ctk f32 -ctv f32 -fa off}
model=models/demo-moe formats=${FORMATS:-none q8 q4} ltypes="Q8_0 Q4_K_M Q4_K_M:f32:q8_0" runs='' heldout=''
outtype=f32 threads=1 name='' out_md=''
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=$2; shift ;;
    --formats) formats=$2; shift ;;
    --llama-types) ltypes=$2; shift ;;
    --runs) runs=$2; shift ;;
    --heldout) heldout=$2; shift ;;
    --outtype) outtype=$2; shift ;;
    --threads) threads=$2; shift ;;
    --name) name=$2; shift ;;
    --out) out_md=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-perplexity-vs-llama.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "run-perplexity-vs-llama.sh: $*" >&2; exit 1; }
case "$outtype" in f32|bf16) ;; *) die "--outtype is f32 or bf16, not '$outtype'" ;; esac
[ "${formats%% *}" = none ] || die "--formats must start with none (expertd's full precision), not '$formats'"
for t in llama-perplexity llama-quantize; do
  [ -x "$bin/$t" ] || die "$bin/$t is missing: run bench/run-llama-cpp-bench.sh --build-only"
done
[ -x build/daemon/expertd ] || die "build/daemon/expertd is missing: ninja -C build"
[ -x "$py" ] || die "$py is missing: python3 -m venv /work/golden-venv && /work/golden-venv/bin/pip install -r tools/golden/requirements.txt"
for f in config.json model.safetensors tokenizer.json; do
  [ -f "$model/$f" ] || die "$model/$f is missing$([ $f = tokenizer.json ] && echo ' (llama.cpp and this check need the model'"'"'s own tokenizer)')"
done
: "${name:=$(basename "$(cd "$model" && pwd)")}"
out=$ldir/results/ppl-$name-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out" "$ldir/models"

# --- 1. the texts -------------------------------------------------------------------------------
if [ -z "$runs" ]; then
  [ "$name" = demo-moe ] || die "--runs \"CTX:FILE ...\" is needed for a model other than the demo model"
  runs="128:tests/fixtures/demo-moe/heldout-16k.txt"
  if [ -z "$heldout" ]; then
    heldout=$ldir/demo-corpus/out/heldout.txt
    if [ ! -f "$heldout" ]; then
      echo "making the demo corpus (tools/demo_model/corpus.py) under $ldir/demo-corpus" >&2
      python3 tools/demo_model/corpus.py --work "$ldir/demo-corpus" --out "$ldir/demo-corpus/out" >&2 ||
        { echo "corpus.py failed: the ctx 512 run is skipped" >&2; heldout=; }
    fi
  fi
  if [ -n "$heldout" ]; then
    if head -c 16000 "$heldout" | cmp -s - tests/fixtures/demo-moe/heldout-16k.txt; then
      head -c 32768 "$heldout" > "$out/heldout-32k.txt"
      runs="$runs 512:$out/heldout-32k.txt"
    else
      echo "$heldout does not start with tests/fixtures/demo-moe/heldout-16k.txt: not the demo" \
           "model's held-out text; the ctx 512 run is skipped" >&2
    fi
  fi
fi

# --- 2. GGUF: the full-precision conversion, then llama-quantize --------------------------------
gguf_base=$ldir/models/$name-$outtype.gguf
if [ ! -f "$gguf_base" ] || [ "$gguf_base" -ot "$model/model.safetensors" ]; then
  PYTHONPATH=$ldir/src/gguf-py "$py" bench/hf_to_gguf_olmoe.py "$model" "$gguf_base.tmp" \
    --outtype "$outtype" 2> "$out/convert-$outtype.log" || { cat "$out/convert-$outtype.log" >&2; exit 1; }
  mv "$gguf_base.tmp" "$gguf_base"
fi
# the GGUF's vocabulary must be the checkpoint's own tokenizer.json (ids, merges, no BOS added
# unless the tokenizer adds one), not a fixture's
PYTHONPATH=$ldir/src/gguf-py "$py" - "$gguf_base" "$model/tokenizer.json" > "$out/vocab-check.txt" <<'PY' ||
import json, sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
def field(k):
    f = r.fields.get(k)
    if f is None:
        return None
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode("utf-8") if f.types[-1] == gguf.GGUFValueType.STRING
                else f.parts[i].tolist()[0] for i in f.data]
    v = f.parts[f.data[0]]
    return bytes(v).decode("utf-8") if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]
tok = json.load(open(sys.argv[2], encoding="utf-8"))
vocab = tok["model"]["vocab"]
merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
tokens, gmerges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
problems = []
for t, i in vocab.items():
    if tokens[i] != t:
        problems.append(f"token {i} is {tokens[i]!r} in the GGUF, {t!r} in tokenizer.json")
        break
if gmerges != merges:
    problems.append(f"merges differ ({len(gmerges or [])} in the GGUF, {len(merges)} in tokenizer.json)")
add_bos = field("tokenizer.ggml.add_bos_token")
print(f"gguf vocabulary: {len(tokens)} tokens ({len(vocab)} from tokenizer.json), {len(gmerges or [])} "
      f"merges, pre {field('tokenizer.ggml.pre')}, add_bos_token {add_bos}, "
      f"bos id {field('tokenizer.ggml.bos_token_id')}")
if problems:
    print("; ".join(problems))
    sys.exit(1)
PY
  { cat "$out/vocab-check.txt" >&2; die "the GGUF's vocabulary is not $model/tokenizer.json's"; }
cat "$out/vocab-check.txt" >&2
# a type TYPE:EMB:OUT is TYPE with llama-quantize's --token-embedding-type EMB and
# --output-tensor-type OUT (either may be empty), named TYPE-embEMB-outOUT in files and tables
label() { echo "$1" | sed 's/:\([^:]*\):\{0,1\}/-emb\1-out/; s/-out$//; s/-emb-out/-out/; s/:/-/g'; }
declare -A gguf_of=([$outtype]=$gguf_base)
labels=
for t in $ltypes; do
  lb=$(label "$t")
  labels="$labels $lb"
  f=$ldir/models/$name-$lb.gguf
  case "$t" in
    BF16|F32)
      lt=$(echo "$t" | tr '[:upper:]' '[:lower:]')
      if [ ! -f "$f" ] || [ "$f" -ot "$model/model.safetensors" ]; then
        PYTHONPATH=$ldir/src/gguf-py "$py" bench/hf_to_gguf_olmoe.py "$model" "$f.tmp" \
          --outtype "$lt" 2> "$out/convert-$lt.log"
        mv "$f.tmp" "$f"
      fi ;;
    *)
      qt=${t%%:*} qargs=()
      case "$t" in *:*)
        emb=$(echo "$t" | cut -d: -f2) outt=$(echo "$t" | cut -d: -f3)
        [ -z "$emb" ] || qargs+=(--token-embedding-type "$emb")
        [ -z "$outt" ] || qargs+=(--output-tensor-type "$outt") ;;
      esac
      if [ ! -f "$f" ] || [ "$f" -ot "$gguf_base" ]; then
        "$bin/llama-quantize" "${qargs[@]}" "$gguf_base" "$f.tmp" "$qt" "$threads" > "$out/quantize-$lb.log" 2>&1 ||
          { tail -n 20 "$out/quantize-$lb.log" >&2; die "llama-quantize $t failed"; }
        mv "$f.tmp" "$f"
        cp "$out/quantize-$lb.log" "$f.quantize.log"
      else
        cp "$f.quantize.log" "$out/quantize-$lb.log" 2>/dev/null || true
      fi ;;
  esac
  gguf_of[$lb]=$f
done

# --- 3. machine and versions --------------------------------------------------------------------
{
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "kernel: $(uname -r); gcc: $(gcc -dumpfullversion); expertd: $(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)"
  echo "llama.cpp: $(cat "$ldir/src/.from-sdist" 2>/dev/null || echo '?'), $("$bin/llama-perplexity" --version 2>&1 | grep -m1 version)"
  echo "python: $("$py" -c 'import platform, numpy, tokenizers; print(platform.python_version(), "numpy", numpy.__version__, "tokenizers", tokenizers.__version__)')"
  echo "threads: $threads; llama-perplexity flags: $llama_args"
} | tee "$out/machine.txt" >&2

# --- 4. the runs --------------------------------------------------------------------------------
# results.tsv: ctx, text, engine, format, ppl, stderr, tokens, windows, scored/window, bos, seconds, load
: > "$out/results.tsv"
for run in $runs; do
  ctx=${run%%:*} text=${run#*:}
  [ -f "$text" ] || die "no text file $text"
  tag=c$ctx
  # Hugging Face tokenizers' ids of the text, as transformers encodes it (no BOS: checked below)
  "$py" - "$model/tokenizer.json" "$text" "$out/$tag-hf-ids.json" <<'PY'
import json, sys, tokenizers
t = tokenizers.Tokenizer.from_file(sys.argv[1])
json.dump({"ids": t.encode(open(sys.argv[2], encoding="utf-8").read()).ids,
           "empty": t.encode("").ids}, open(sys.argv[3], "w"))
PY
  for t in $outtype $labels; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    kld=()
    [ "$t" = "$outtype" ] && kld=(--kl-divergence-base "$out/$tag-$t.kld")
    # llama.cpp's logger runs on its own thread and now and then loses the last lines at exit
    # (exit status 0, no "Final estimate"): such a run is repeated, at most three times
    for try in 1 2 3; do
      # shellcheck disable=SC2086
      "$bin/llama-perplexity" -m "${gguf_of[$t]}" -f "$text" -c "$ctx" -t "$threads" -tb "$threads" \
        $llama_args "${kld[@]}" > "$out/$tag-llama-$t.log" 2>&1 ||
        { tail -n 20 "$out/$tag-llama-$t.log" >&2; die "llama-perplexity on $t, ctx $ctx failed"; }
      grep -q "Final estimate" "$out/$tag-llama-$t.log" && break
      echo "llama-perplexity on $t, ctx $ctx: its log lost its end (try $try)" >&2
    done
    grep -q "Final estimate" "$out/$tag-llama-$t.log" || die "llama-perplexity on $t, ctx $ctx printed no result"
    # its PPL, and each window's mean -log p from the running PPL it prints after each window
    # ([k]PPL_k: k windows' mean is ln PPL_k; printed to 4 decimals, so a window's mean comes
    # back within about 1e-4)
    "$py" - "$out/$tag-llama-$t.log" "$ctx" "$text" "$t" "$load" "$out/$tag-llama-$t.windows.json" \
      >> "$out/results.tsv" <<'PY'
import json, math, re, sys
log = open(sys.argv[1], errors="replace").read()
m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
c = re.search(r"over (\d+) chunks, n_ctx=(\d+)", log)
s = re.search(r"([0-9.]+) seconds per pass", log)
ctx = int(sys.argv[2])
run = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+),", log)]
cum = [0.0] + [(k + 1) * math.log(p) for k, p in enumerate(run)]
json.dump({"window_mean_nll": [cum[k + 1] - cum[k] for k in range(len(run))]}, open(sys.argv[6], "w"))
print("\t".join([sys.argv[2], sys.argv[3], "llama.cpp", sys.argv[4], m.group(1), m.group(2), "-",
                 c.group(1), str(ctx - 1 - ctx // 2), "-", s.group(1) if s else "-", sys.argv[5]]))
PY
  done
  for f in $formats; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    build/daemon/expertd perplexity --model "$model" --text "$text" --ctx "$ctx" --threads "$threads" \
      --quantize "$f" --pack off --json > "$out/$tag-expertd-$f.json" 2> "$out/$tag-expertd-$f.err" ||
      { cat "$out/$tag-expertd-$f.err" >&2; die "expertd perplexity --quantize $f, ctx $ctx failed"; }
    "$py" - "$out/$tag-expertd-$f.json" "$ctx" "$text" "$f" "$load" >> "$out/results.tsv" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print("\t".join([sys.argv[2], sys.argv[3], "expertd", sys.argv[4], f"{j['ppl']:.4f}", f"{j['ppl_stderr']:.5f}",
                 str(j["n_tokens"]), str(j["n_windows"]), str(j["scored_per_window"]), str(j["bos"]),
                 f"{j['seconds']:.2f}", sys.argv[5]]))
PY
  done
  # the same windows? llama.cpp's scored ids (its --kl-divergence-base dump) against HF's, and
  # expertd's token count, BOS and windows against both
  "$py" - "$out/$tag-$outtype.kld" "$out/$tag-hf-ids.json" "$out/$tag-expertd-none.json" \
    "$out/$tag-llama-$outtype.log" "$ctx" > "$out/$tag-tokens.txt" <<'PY' ||
import json, re, struct, sys
import numpy as np
kld, hf, xd, log, ctx = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), \
    open(sys.argv[4], errors="replace").read(), int(sys.argv[5])
head = open(kld, "rb").read(20)
assert head[:8] == b"_logits_", kld
n_ctx, n_vocab, n_chunk = struct.unpack("<iii", head[8:20])
lt = np.fromfile(kld, dtype="<i4", count=n_ctx * n_chunk, offset=20)
ids = np.array(hf["ids"], dtype=np.int64)
problems = []
if n_ctx != ctx:
    problems.append(f"llama.cpp's window is {n_ctx}, not {ctx}")
if len(ids) // ctx != n_chunk:
    problems.append(f"llama.cpp scored {n_chunk} windows; HF's {len(ids)} tokens make {len(ids) // ctx}")
elif not np.array_equal(lt, ids[:n_chunk * ctx]):
    i = int(np.nonzero(lt != ids[:n_chunk * ctx])[0][0])
    problems.append(f"token {i} differs: llama.cpp {lt[i]}, HF tokenizers {ids[i]}")
if xd["n_tokens"] != len(ids):
    problems.append(f"expertd encodes {xd['n_tokens']} tokens, HF tokenizers {len(ids)}")
if xd["n_windows"] != n_chunk or xd["scored_per_window"] != ctx - 1 - ctx // 2:
    problems.append(f"expertd scores {xd['n_windows']} windows x {xd['scored_per_window']}")
hf_bos = hf["empty"][0] if len(hf["empty"]) == 1 else -1
if xd["bos"] != hf_bos:
    problems.append(f"expertd's BOS {xd['bos']}, HF's {hf_bos}")
# llama-perplexity replaces each window's first token with BOS when the vocabulary says add_bos
# (its -v log says; the GGUF key is checked by the vocabulary check above)
print(f"ctx {ctx}: HF tokenizers {len(ids)} tokens (BOS {'none' if hf_bos < 0 else hf_bos}), expertd "
      f"{xd['n_tokens']} (BOS {'none' if xd['bos'] < 0 else xd['bos']}); llama.cpp scored {n_chunk} "
      f"windows of {n_ctx} whose {n_chunk * n_ctx} ids "
      f"{'equal' if not problems else 'vs'} HF's first {n_chunk * ctx}; {len(ids) - n_chunk * ctx} "
      f"trailing tokens unscored by both")
if problems:
    print("; ".join(problems))
    sys.exit(1)
PY
    { cat "$out/$tag-tokens.txt" >&2; die "the engines do not see the same windows at ctx $ctx"; }
  cat "$out/$tag-tokens.txt" >&2
  rm -f "$out/$tag-$outtype.kld"
done

# --- 5. the table -------------------------------------------------------------------------------
# Each format's change against its own engine's full precision, with the standard error of that
# change over the windows (both runs score the same tokens, so the per-window differences of mean
# -log p are paired; the error is theirs, not the PPLs' own +/-, which is the spread of the text)
"$py" - "$out" "$outtype" "$formats" "$labels" <<'PY' | tee "$out/summary.md"
import collections, json, math, os, re, sys
out, base, formats, ltypes = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "results.tsv"))]

def windows(ctx, engine, fmt):
    f = f"c{ctx}-llama-{fmt}.windows.json" if engine == "llama.cpp" else f"c{ctx}-expertd-{fmt}.json"
    return json.load(open(os.path.join(out, f)))["window_mean_nll"]

def paired(a, b):
    """mean and standard error of a - b over windows, in nats"""
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / len(d)
    v = sum((x - m) ** 2 for x in d) / (len(d) - 1) if len(d) > 1 else 0.0
    return m, math.sqrt(v / len(d))

def pct(m, se):
    return f"{(math.exp(m) - 1) * 100:+.3f}% +/- {se * 100:.3f}"

def quant_summary(t):
    """llama-quantize's per-tensor types and its fallbacks, from its log."""
    p = os.path.join(out, f"quantize-{t}.log")
    if not os.path.exists(p):
        return ""
    log = open(p, errors="replace").read()
    kinds = collections.Counter(re.findall(r"converting to (\w+)", log))
    falls = re.findall(r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\)"
                       r" -> falling back to\s+(\w+)", log)
    size = re.search(r"quant size\s*=\s*([0-9.]+ MiB(?: \([0-9.]+ BPW\))?)", log)
    s = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items()))
    if falls:
        s += "; fallbacks: " + ", ".join(f"{n.replace('.weight', '')} {a} -> {b}" for n, _, _, a, b in falls)
    return s + (f"; {size.group(1)}" if size else "")

names = {"none": "bf16 weights (f32 math)", base: f"{base.upper()} GGUF"}
runs = list(dict.fromkeys((r[0], r[1]) for r in rows))
print("| ctx, text | engine | format | PPL | change vs own full precision (+/- s.e. over windows) | windows x scored |")
print("| --- | --- | --- | --- | --- | --- |")
verdicts = []
for ctx, text in runs:
    sel = [r for r in rows if (r[0], r[1]) == (ctx, text)]
    full = {"llama.cpp": base, "expertd": "none"}
    ppl = {(r[2], r[3]): float(r[4]) for r in sel}
    win = {(r[2], r[3]): windows(ctx, r[2], r[3]) for r in sel}
    ch = {}
    for r in sel:
        key = (r[2], r[3])
        ch[key] = paired(win[key], win[(r[2], full[r[2]])])
        print(f"| {ctx}, {os.path.basename(text)} | {r[2]} | {names.get(r[3], r[3])} | {float(r[4]):.4f} "
              f"+/- {float(r[5]):.4f} | {pct(*ch[key]) if r[3] != full[r[2]] else '(reference)'} | "
              f"{r[7]} x {r[8]} |")
    xl = (ppl[("expertd", "none")] / ppl[("llama.cpp", base)] - 1) * 100
    worst = max(abs(a - b) for a, b in zip(win[("expertd", "none")], win[("llama.cpp", base)]))
    verdicts.append(f"ctx {ctx}: full precision: expertd {ppl[('expertd', 'none')]:.4f}, llama.cpp "
                    f"{ppl[('llama.cpp', base)]:.4f} ({xl:+.4f}%; windows' mean -log p within {worst:.1e})")
    if ("expertd", "q8") in ch:
        m, se = ch[("expertd", "q8")]
        d = (math.exp(m) - 1) * 100
        verdicts.append(f"ctx {ctx}: q8 {pct(m, se)} against bf16: goal within 0.5%: "
                        f"{'met' if abs(d) <= 0.5 else 'NOT met'}"
                        + (f" (llama.cpp Q8_0 {pct(*ch[('llama.cpp', 'Q8_0')])})" if ("llama.cpp", "Q8_0") in ch else ""))
    for k in [t for t in ltypes if t.startswith("Q4_K")]:
        if ("llama.cpp", k) not in ch:
            continue
        for f in formats[1:]:
            if not f.startswith("q4"):
                continue
            dx = [(a - b) - (c - e) for a, b, c, e in zip(win[("expertd", f)], win[("expertd", "none")],
                                                       win[("llama.cpp", k)], win[("llama.cpp", base)])]
            m = sum(dx) / len(dx)
            se = math.sqrt(sum((x - m) ** 2 for x in dx) / (len(dx) - 1) / len(dx))
            verdicts.append(f"ctx {ctx}: {f} {pct(*ch[('expertd', f)])} against {k} {pct(*ch[('llama.cpp', k)])}: "
                            f"goal no larger: {'met' if ch[('expertd', f)][0] <= ch[('llama.cpp', k)][0] else 'NOT met'} "
                            f"(difference of the increases {m * 100:+.3f}% +/- {se * 100:.3f} over paired windows)")
print()
for v in verdicts:
    print(f"- {v}")
for t in ltypes:
    s = quant_summary(t)
    if s:
        print(f"- llama-quantize {t}: {s}")
PY
[ -z "$out_md" ] || cp "$out/summary.md" "$out_md"
echo "results in $out" >&2
