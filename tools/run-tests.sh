#!/usr/bin/env bash
# The whole test suite: builds (installing dependencies as needed), runs every meson suite,
# then reruns the CPU suites under AddressSanitizer and UBSan. GPU tests skip without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh || exit 1
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

status=0
meson test -C build --print-errorlogs --num-processes 2 || status=1

# Sanitizers: out-of-bounds reads and undefined behaviour fail the run.
if [ ! -f build-asan/build.ninja ]; then
  meson setup build-asan -Dcuda=disabled -Db_sanitize=address,undefined -Dbuildtype=debugoptimized >/dev/null || exit 1
fi
ninja -C build-asan >/dev/null || exit 1
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --num-processes 2 || status=1

python3 - build/meson-logs/testlog.json build-asan/meson-logs/testlog.json <<'PY'
import json, sys
counts = {"passed": 0, "failed": 0, "skipped": 0}
for path in sys.argv[1:]:
    for line in open(path):
        t = json.loads(line)
        key = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}.get(t["result"], "failed")
        counts[key] += 1
        if key == "skipped":
            reason = (t.get("stdout") or "").strip().splitlines()
            print(f"skipped {t['name']}: {reason[0] if reason else 'no reason given'}")
print(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
PY
exit $status
