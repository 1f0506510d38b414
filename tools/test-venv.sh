#!/usr/bin/env bash
# Makes (once) the Python venv of the integration tests, build/http-venv, with the pinned
# packages of tests/requirements-http.txt, and prints its python. Safe to run from several tests
# at once (a lock). Exit 77 (skip) when venv or the package index is unavailable, 1 on other
# failures. Usage: tools/test-venv.sh SOURCE_DIR
set -u
src=$1
venv=$src/build/http-venv
mkdir -p "$src/build"
exec 9>"$src/build/http-venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import openai, prometheus_client, requests, jsonschema' 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2 || { echo "SKIPPED: python3 -m venv is not available" >&2; exit 77; }
log=$(mktemp)
if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$src/tests/requirements-http.txt" >"$log" 2>&1; then
  if grep -qiE "network|resolve|connection|Could not find a version|No matching distribution" "$log"; then
    echo "SKIPPED: pip cannot reach the package index to install tests/requirements-http.txt" >&2
    tail -3 "$log" >&2
    rm -rf "$venv" "$log"
    exit 77
  fi
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
echo "$venv/bin/python"
