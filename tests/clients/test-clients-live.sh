#!/usr/bin/env bash
# The three clients against a live `expertd serve` (the HTTP suite's test model: random
# weights with the qwen2 fixture tokenizer and its ChatML tokenizer_config.json), started with --config on an ephemeral port and an API key
# file: expertd-client (completion and chat, streamed and whole), the openai SDK example and
# the curl example; then SIGTERM drains and exits 0.
# Usage: test-clients-live.sh EXPERTD EXPERTD_CLIENT|none SYNTH_MODEL SOURCE_ROOT FIXTURES_DIR
set -u
expertd=$1 client=$2 synth=$3 src=$4 fixtures=$5
tmp=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
passed=0 failed=0 skipped=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }
skip() { skipped=$((skipped + 1)); echo "SKIPPED $1: $2"; }
unset EXPERTD_MODEL EXPERTD_HOST EXPERTD_PORT EXPERTD_API_KEY EXPERTD_CONFIG EXPERTD_URL

"$synth" --out "$tmp/model" --vocab 602 --layers 2 --hidden 64 --experts 8 --top-k 2 \
  --max-pos 8192 >/dev/null || { echo "FAIL synth"; exit 1; }
cp "$fixtures/tokenizers/qwen2/tokenizer.json" "$fixtures/chat/qwen2_moe/tokenizer_config.json" \
  "$tmp/model/"
printf 'sk-live-test\n' >"$tmp/api-key"; chmod 600 "$tmp/api-key"
cat >"$tmp/expertd.conf" <<CONF
model = $tmp/model
served-model-name = tiny
port = 0
api-key-file = $tmp/api-key
drain-timeout = 10
CONF
"$expertd" serve --config "$tmp/expertd.conf" >"$tmp/serve.log" 2>&1 &
pid=$!
url=
for _ in $(seq 1 300); do
  url=$(grep -o 'listening on http://[^ ]*' "$tmp/serve.log" | head -1 | sed 's/listening on //')
  [ -n "$url" ] && curl -sf "$url/health" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$url" ] || ! curl -sf "$url/health" >/dev/null 2>&1; then
  echo "FAIL serve_starts: $(cat "$tmp/serve.log")"; exit 1
fi
ok serve_starts_from_config_file
export EXPERTD_URL=$url EXPERTD_API_KEY=sk-live-test

# --- expertd-client
if [ "$client" = none ]; then
  skip expertd_client "not built (libcurl4-openssl-dev missing)"
else
  for mode in "" "--stream" "--chat" "--chat --stream"; do
    name="client${mode// /_}"; name=${name//--/_}
    # shellcheck disable=SC2086
    if "$client" --prompt "Hello there" --max-tokens 6 --seed 1 $mode >"$tmp/out" 2>"$tmp/err" &&
       grep -q 'finish_reason=length' "$tmp/err"; then
      [ "${mode#*--stream}" != "$mode" ] && ! grep -q 'completion_tokens=6' "$tmp/err" &&
        { fail "$name" "no usage chunk: $(cat "$tmp/err")"; continue; }
      ok "$name"
    else fail "$name" "$(cat "$tmp/out" "$tmp/err")"; fi
  done
  # the same seed gives the same text, streamed or not
  "$client" --prompt "Hello" --max-tokens 8 --seed 5 --temperature 1 >"$tmp/a" 2>/dev/null
  "$client" --prompt "Hello" --max-tokens 8 --seed 5 --temperature 1 --stream >"$tmp/b" 2>/dev/null
  if [ -s "$tmp/a" ] && cmp -s "$tmp/a" "$tmp/b"; then ok client_stream_equals_whole
  else fail client_stream_equals_whole "$(od -c "$tmp/a" | head -3) vs $(od -c "$tmp/b" | head -3)"; fi
  if EXPERTD_API_KEY=wrong "$client" --prompt Hi --max-tokens 2 >"$tmp/out" 2>"$tmp/err"; then
    fail client_wrong_key "accepted"
  elif grep -q 'server error' "$tmp/err"; then ok client_wrong_key_refused
  else fail client_wrong_key "$(cat "$tmp/err")"; fi
fi

# --- the openai SDK example, with the pinned SDK of the integration tests' venv
py=$("$src/tools/test-venv.sh" "$src") || py=
if [ -n "$py" ] && "$py" -c 'import openai' 2>/dev/null; then
  for mode in "" "--chat"; do
    name="openai_example${mode//-/_}"
    # shellcheck disable=SC2086
    if "$py" "$src/clients/examples/openai_stream.py" --prompt "Hello there" --max-tokens 5 \
         --seed 2 $mode >"$tmp/out" 2>"$tmp/err" &&
       grep -q 'finish_reason=length completion_tokens=5' "$tmp/err"; then ok "$name"
    else fail "$name" "$(tail -5 "$tmp/err")"; fi
  done
else
  skip openai_example "the test venv (tools/test-venv.sh) could not be made"
fi

# --- the curl example
if bash "$src/clients/examples/curl.sh" "Hello there" >"$tmp/out" 2>"$tmp/err" &&
   [ "$(grep -c '^data: \[DONE\]' "$tmp/out")" = 2 ] && grep -q '"usage"' "$tmp/out"; then
  ok curl_example
else fail curl_example "$(head -c 600 "$tmp/out") $(cat "$tmp/err")"; fi
if ps -o args= -p "$pid" | grep -q sk-live-test; then fail key_not_in_ps "$(ps -o args= -p "$pid")"
else ok key_not_in_ps; fi

# --- SIGTERM: exit 0
kill -TERM "$pid"
wait "$pid"; rc=$?
pid=
if [ "$rc" = 0 ]; then ok serve_sigterm_exits_0; else fail serve_sigterm_exits_0 "exit $rc: $(tail -3 "$tmp/serve.log")"; fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
