#!/usr/bin/env bash
# Stream a completion and a chat answer from expertd with curl.
#   EXPERTD_URL=http://127.0.0.1:8000 EXPERTD_API_KEY=... clients/examples/curl.sh "Hello" [MODEL]
# -N turns off curl's buffering so each `data: {...}` event prints as the server sends it.
# The key is passed in a header file on stdin, so it does not show in ps.
set -euo pipefail
url=${EXPERTD_URL:-http://127.0.0.1:8000}
prompt=${1:-Hello}
model=${2:-$(curl -sS "$url/v1/models" -H @<(printf 'Authorization: Bearer %s\n' "${EXPERTD_API_KEY:-}") |
             python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')}
json_prompt=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$prompt")
auth() { printf 'Authorization: Bearer %s\n' "${EXPERTD_API_KEY:-}"; }

echo "== POST /v1/completions (streamed)"
curl -sS -N --fail-with-body "$url/v1/completions" -H @<(auth) \
  -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"prompt\": $json_prompt, \"max_tokens\": 16, \"stream\": true}"

echo "== POST /v1/chat/completions (streamed, with usage)"
curl -sS -N --fail-with-body "$url/v1/chat/completions" -H @<(auth) \
  -H 'Content-Type: application/json' \
  -d "{\"model\": \"$model\", \"messages\": [{\"role\": \"user\", \"content\": $json_prompt}],
       \"max_tokens\": 16, \"stream\": true, \"stream_options\": {\"include_usage\": true}}"
