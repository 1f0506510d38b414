#!/bin/sh
# Runs inside the booted test container as a oneshot unit ordered after expertd.service: checks
# what an operator relies on from the unit, writes one "ok NAME" / "FAIL NAME: why" line per
# check to /opt/xd-test/out/result, then "done", and powers the container off.
# Only loopback is used: the container has a private network with nothing but lo.
out=/opt/xd-test/out/result
: >"$out"
ok()   { echo "ok   $1" >>"$out"; }
fail() { echo "FAIL $1: $2" >>"$out"; }
check() { # NAME CONDITION-COMMAND... : ok when the command succeeds
  name=$1; shift
  if "$@" >/tmp/check.out 2>&1; then ok "$name"; else fail "$name" "$(head -c 400 /tmp/check.out)"; fi
}
key=$(cat /opt/xd-test/api-key)
url=http://127.0.0.1:8000
marker=zebrafish-marker-$$   # prompt text that must never reach the journal
complete() { # MAX_TOKENS [STREAM]: a completion with the key
  curl -sS --max-time 60 -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"$marker and\", \"max_tokens\": $1, \"ignore_eos\": true${2:+, \"stream\": true}}" \
    "$url/v1/completions"
}
main_pid() { systemctl show -p MainPID --value expertd; }

check service_active_after_ready systemctl is-active --quiet expertd
status=$(systemctl show -p StatusText --value expertd)
names_model() { echo "$status" | grep -q demo-moe; }
check status_names_model names_model
health_ok() { curl -sS --max-time 10 "$url/health" | grep -q '"status"'; }
completion_ok() { complete 4 | grep -q '"text"'; }
check health_answers health_ok
check completion_answers completion_ok
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
  -d '{"prompt": "x", "max_tokens": 1}' "$url/v1/completions")
check api_key_enforced_without_key test "$code" = 401
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Authorization: Bearer wrong' \
  -H 'Content-Type: application/json' -d '{"prompt": "x", "max_tokens": 1}' "$url/v1/completions")
check api_key_enforced_wrong_key test "$code" = 401

# DynamicUser=yes: the daemon runs as a user made for it, not as root.
dynamic_user() { uid=$(awk '/^Uid:/ {print $2}' "/proc/$(main_pid)/status"); [ -n "$uid" ] && [ "$uid" -ge 61184 ]; }
check runs_as_dynamic_user dynamic_user

# The watchdog: a stopped main process sends no WATCHDOG=1; systemd kills it (SIGABRT) and
# Restart=on-failure starts a new one, which becomes active again after its READY=1.
pid=$(main_pid) restarts=$(systemctl show -p NRestarts --value expertd)
kill -STOP "$pid"
i=0
while [ $i -lt 60 ]; do
  sleep 1; i=$((i + 1))
  now=$(main_pid)
  if [ "$now" != "$pid" ] && [ "$now" != 0 ] && systemctl is-active --quiet expertd; then break; fi
done
restarted() {
  [ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] && systemctl is-active --quiet expertd &&
    [ "$(systemctl show -p NRestarts --value expertd)" -gt "$restarts" ]
}
check watchdog_restarts_stopped_daemon restarted
check watchdog_logged_abort sh -c "journalctl -u expertd --no-pager | grep -qiE 'watchdog timeout|SIGABRT|ABRT'"

# Drain: systemctl stop with a stream in flight lets it finish with [DONE], and the daemon exits 0.
complete 48 stream >/tmp/stream.out 2>&1 &
curl_pid=$!
i=0   # wait until the stream has started sending
while [ $i -lt 100 ] && ! grep -q '^data: {' /tmp/stream.out; do sleep 0.1; i=$((i + 1)); done
systemctl stop expertd
wait $curl_pid
stream_done() { tail -c 200 /tmp/stream.out | grep -q 'data: \[DONE\]'; }
exited_zero() {
  [ "$(systemctl show -p ExecMainStatus --value expertd)" = 0 ] &&
    [ "$(systemctl show -p Result --value expertd)" = success ]
}
check drain_finishes_stream_with_done stream_done
check stop_exits_zero exited_zero

# The journal: one line per completion request, and no prompt text anywhere.
journalctl -u expertd --no-pager -o cat >/tmp/journal.txt
n=$(grep -c 'request [0-9]* POST /v1/completions status=' /tmp/journal.txt)
check journal_one_line_per_request test "$n" = 4
no_prompt() { ! grep -q zebrafish /tmp/journal.txt; }
check journal_holds_no_prompt_text no_prompt
cp /tmp/journal.txt /opt/xd-test/out/journal.txt

echo done >>"$out"
systemctl poweroff --no-block
