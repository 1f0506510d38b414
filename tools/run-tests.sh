#!/usr/bin/env bash
# The whole test suite: builds (installing dependencies as needed), runs every meson suite,
# then reruns the CPU suites under AddressSanitizer and UBSan, and the threaded ones under
# ThreadSanitizer, then runs every libFuzzer target for a bounded time. GPU tests skip without a GPU; any other skip (no venv, no pip, no
# systemd-analyze) fails the run, since the run would otherwise be green without those tests.
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

# Data races: the threaded parts (the scheduler's tests; the HTTP suite, whose daemon runs a
# scheduler thread, MHD's polling threads and the park's watcher) under ThreadSanitizer; a race makes the process
# exit non-zero, which fails the test. Run outside meson with one OpenMP thread (the meson tests
# set two, and libgomp is not instrumented, so its barriers would read as races).
if [ ! -f build-tsan/build.ninja ]; then
  meson setup build-tsan -Dcuda=disabled -Db_sanitize=thread -Dbuildtype=debugoptimized >/dev/null || exit 1
fi
ninja -C build-tsan tests/test-scheduler daemon/expertd >/dev/null || exit 1
: >build-tsan/tsan-results.json
tsan_test() { # NAME COMMAND...: runs it, records the result where the summary reads it
  local name=$1; shift
  echo "tsan: $name"
  OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 "$@" >build-tsan/$name.log 2>&1
  local rc=$? result=OK
  [ $rc = 77 ] && result=SKIP
  if [ $rc != 0 ] && [ $rc != 77 ]; then result=FAIL; status=1; tail -40 build-tsan/$name.log; fi
  printf '{"name": "tsan / %s", "suite": ["tsan"], "result": "%s", "stdout": %s}\n' "$name" "$result" \
    "$({ grep -m3 SKIPPED build-tsan/$name.log || head -1 build-tsan/$name.log; } | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')" \
    >>build-tsan/tsan-results.json
}
tsan_test scheduler build-tsan/tests/test-scheduler tests/fixtures
tsan_test http tests/test-http.sh build-tsan/daemon/expertd build/tools/xd-synth-model tests/fixtures "$PWD" build-tsan/tests/http

# Fuzzing: every libFuzzer target (clang, build-fuzz/) for 20 s on top of its seed corpus; a
# crash, leak or sanitizer report fails the run, and the log shows the input (base64) and the
# corpus folder to keep it in as a seed once fixed. About 3 minutes on 2 cores.
echo "fuzz: every libFuzzer target for 20 s"
tools/run-fuzzers.sh 20 || status=1

# The summary. Only GPU tests may skip: a skip anywhere else (the HTTP suite without a venv or
# pip, the TSan HTTP run likewise, a part of clients-live: a line starting SKIPPED) counts as
# failed and fails the run.
python3 - build/meson-logs/testlog.json build-asan/meson-logs/testlog.json \
  build-tsan/tsan-results.json build-fuzz/fuzz-results.json <<'PY' || status=1
import json, re, sys

def suites(t):
    """The test's suites: the "suite" field where the log has one (tsan-results.json), else
    from meson's name, "project:suite[+suite...] / test" (meson 1.0's testlog.json has no
    suite field). Empty when neither says, so such a skip fails too."""
    if t.get("suite"):
        return [s.split(":")[-1] for s in t["suite"]]
    m = re.match(r"[^:/ ]+:(\S+) / ", t["name"])
    return m.group(1).split("+") if m else []

counts = {"passed": 0, "failed": 0, "skipped": 0}
for path in sys.argv[1:]:
    for line in open(path):
        t = json.loads(line)
        key = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}.get(t["result"], "failed")
        # the SKIPPED lines (test-venv.sh says why on stderr), else stdout's first line
        lines = ((t.get("stderr") or "") + "\n" + (t.get("stdout") or "")).strip().splitlines()
        said = [l.strip() for l in lines if "SKIPPED" in l]
        # a test that passed but skipped a part of itself (clients-live without expertd-client
        # or the venv) skipped too
        parts = [l.strip() for l in lines if l.startswith("SKIPPED")]
        if key == "passed" and parts and "gpu" not in suites(t):
            key = "failed"
            print(f"FAIL {t['name']} ({path}): passed, but skipped a part outside the gpu suite, "
                  f"which fails the run: {' / '.join(parts)}")
        if key == "skipped":
            reason = " / ".join(said) or (lines[0] if lines else "no reason given")
            if "gpu" in suites(t):
                print(f"skipped {t['name']}: {reason}")
            else:
                key = "failed"
                print(f"FAIL {t['name']} ({path}): skipped outside the gpu suite, which fails the "
                      f"run (only GPU tests may skip): {reason}")
        counts[key] += 1
print(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
sys.exit(1 if counts["failed"] else 0)
PY
exit $status
