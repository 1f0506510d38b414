#!/usr/bin/env bash
# The daemon at scale (issue 20): how many connections and streams `expertd serve` holds, on
# its few polling threads, with a tiny model so that the HTTP layer, not the engine, is what
# is measured. Two runs against one server (loopback only, each bounded):
#  A. --streams 2000 concurrent SSE streams (16 tokens each) while --slow 1000 sockets trickle
#     request headers a byte a second (re-opened when the header timeout cuts them);
#  B. --hold 10000 connections, each answered once (/health) and then kept alive idle, plus
#     100 streams while they are open.
# bench/loadgen.py's scale mode sends both, polls /health every 0.5 s and samples the server's
# RSS, threads and descriptors; connections are spread over 100 loopback addresses, so the
# default max-connections-per-client (128) holds. JSON in build/daemon-scale/<date>/.
#
#   bench/run-daemon-scale.sh [--streams 2000] [--slow 1000] [--hold 10000] [--expertd BIN]
# (--expertd: another build, e.g. the thread-per-connection one, as the baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
streams=2000 slow=1000 hold=10000 expertd=build/daemon/expertd
while [ $# -gt 0 ]; do
  case $1 in
    --streams) streams=$2; shift 2 ;;
    --slow) slow=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --expertd) expertd=$2; shift 2 ;;
    -h|--help) sed -n 2,15p "$0"; exit 0 ;;
    *) echo "run-daemon-scale: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$expertd" ] || { echo "run-daemon-scale: build expertd first" >&2; exit 1; }
py=build/http-venv/bin/python
[ -x $py ] || { echo "run-daemon-scale: make build/http-venv first (tools/test-venv.sh)" >&2; exit 1; }
run=build/daemon-scale/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run"
model=build/bench-models/scale-tiny
if [ ! -f "$model/model.safetensors" ]; then
  build/tools/xd-synth-model --out "$model" --vocab 602 --layers 2 --hidden 64 --experts 8 \
    --top-k 2 --max-pos 2048 >/dev/null
  cp tests/fixtures/tokenizers/qwen2/tokenizer.json tests/fixtures/chat/qwen2_moe/tokenizer_config.json "$model/"
fi
ulimit -n "$(ulimit -Hn)"
port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$expertd" serve --model "$model" --port "$port" --threads 1 --max-waiting 4096 \
  --max-running 256 --kv-blocks 4096 --log-level info 2>"$run/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.2
done
lg=(bench/loadgen.py --base-url "http://127.0.0.1:$port/v1" --model scale-tiny --output-tokens 16
    --ignore-eos --source-addresses 100 --server-pid "$pid")
echo "A: $streams streams + $slow slow sockets" >&2
$py "${lg[@]}" --streams "$streams" --slow-sockets "$slow" --out "$run/streams.json" &
lgpid=$!
sleep 2  # the slow sockets open, the streams start
for _ in $(seq 1 10); do
  curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$port/health"
  sleep 0.3
done >"$run/health-while-streaming.txt"
wait $lgpid || true
echo "/health while streaming (status, seconds):" $(cat "$run/health-while-streaming.txt") >&2
echo "B: $hold held connections + 100 streams" >&2
$py "${lg[@]}" --streams 100 --hold-connections "$hold" --hold-seconds 8 --out "$run/hold.json" &
lgpid=$!
# while they are all held: /health from curl, a client of its own (the loadgen's own polls
# share its event loop with the 10,000 connections, so they time the client too)
for _ in $(seq 1 600); do
  [ "$(ls /proc/$pid/fd | wc -l)" -ge "$hold" ] && break
  sleep 0.1
done
for _ in $(seq 1 10); do
  curl -s -o /dev/null -m 10 -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$port/health"
  sleep 0.2
done >"$run/health-while-held.txt"
wait $lgpid || true
echo "/health while $hold held (status, seconds):" $(cat "$run/health-while-held.txt") >&2
grep -E "open files|max-connections" "$run/serve.log" >&2 || true
echo "run-daemon-scale: results in $run" >&2
