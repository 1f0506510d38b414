#!/usr/bin/env bash
# Every GPU test and benchmark in one call on the device machine (an H100/H200 with nvcc, CUDA,
# PyTorch, transformers, meson and ninja, but no package access), in at most DEVICE_BUDGET_S
# seconds (default 470). Run from the repository root with the .deb files of
# tools/device-fetch-debs.sh carried in .deb/:
#
#   device run, carry [".deb"]:  XD_COMMIT=<hash> tools/device-check.sh
#
# Steps, each bounded by what is left of the budget and logged to $OUT/<step>.log:
#   1. the GPU, driver, CUDA, compiler and meson versions;
#   2. the carried libraries unpacked into a prefix, a build with CUDA for sm_90 (warnings are
#      not errors there: CI checks them with its own compiler), only the GPU targets;
#      a GPU test that skips there counts as failed (the GPU was not usable);
#   3. the gpu meson suite (every fixture, both expert paths, offloading at every cache size
#      the test has, with its stress delays);
#   4. compute-sanitizer memcheck and racecheck over the offload test;
#   5. with time left, the GPU benchmark (bench/run-gpu-bench.sh), one repeat.
# $OUT/summary.md is written as it goes (pass/fail per test, sanitizer errors, the first lines
# of each failure), so it comes back even when a step fails or the time runs out; seven files
# in all (the device returns at most eight). Without $OUT
# (a trial run here) everything goes to build-device/out. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
t0=$SECONDS
budget=${DEVICE_BUDGET_S:-470}
build=${DEVICE_BUILD_DIR:-build-device}
out=${OUT:-$repo/$build/out}
mkdir -p "$out"
summary=$out/summary.md
prefix=/tmp/xd-prefix
failed=0

say() { echo "$*" | tee -a "$summary"; }
left() { echo $((budget - (SECONDS - t0))); }

# step NAME CAP COMMAND...: runs COMMAND with at most CAP seconds (less if the budget is short),
# output in $out/NAME.log; records PASS, FAIL (with the log's last lines) or TIMEOUT.
step() {
  local name=$1 cap=$2; shift 2
  local t=$(left)
  [ "$cap" -lt "$t" ] && t=$cap
  if [ "$t" -lt 10 ]; then
    say "- $name: NOT RUN (budget spent)"
    failed=1
    return 1
  fi
  local start=$SECONDS rc
  # through bash so that a step may be one of this script's functions (exported below)
  timeout --kill-after=10 "$t" bash -c '"$@"' "$name" "$@" >"$out/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - start))
  if [ $rc = 0 ]; then
    say "- $name: PASS (${took} s)"
  else
    failed=1
    if [ $rc = 124 ] || [ $rc = 137 ]; then say "- $name: TIMEOUT after ${took} s (cap ${t} s)"
    else say "- $name: FAIL, exit $rc (${took} s)"; fi
    { echo '  ```'; tail -n 15 "$out/$name.log" | sed 's/^/  /'; echo '  ```'; } >>"$summary"
  fi
  return $rc
}

: >"$summary"
say "# device check, commit ${XD_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}, $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""

# ---- 1. versions ----
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
{
  echo '```'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv,noheader 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  nvcc --version 2>&1 | tail -n 2
  cc --version 2>&1 | head -n 1
  echo "meson $(meson --version 2>&1), ninja $(ninja --version 2>&1)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) threads"
  echo '```'
} 2>&1 | tee -a "$summary"

# ---- 2. libraries and build ----
unpack() {
  rm -rf "$prefix"
  mkdir -p "$prefix"
  local deb n=0
  for deb in "$repo"/.deb/*.deb; do
    [ -f "$deb" ] || continue
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$deb" "$prefix" || return 1
    else # ar and tar: a .deb is an ar archive holding data.tar.*
      local data
      data=$(ar t "$deb" | grep '^data\.tar') || return 1
      ar p "$deb" "$data" | tar -x -a -f - -C "$prefix" 2>/dev/null ||
        ar p "$deb" "$data" | tar -xJ -C "$prefix" || return 1
    fi
    n=$((n + 1))
  done
  if [ $n = 0 ]; then
    echo "no .deb files in $repo/.deb: run tools/device-fetch-debs.sh here and carry .deb"
    return 1
  fi
  # The .pc files say prefix=/usr; point them at the prefix. libmicrohttpd's Requires.private
  # (gnutls) only matters for static links, and nothing here links it.
  local pc
  for pc in "$prefix"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc; do
    [ -f "$pc" ] || continue
    sed -i -e "s|^prefix=/usr\$|prefix=$prefix/usr|" -e '/^Requires.private: gnutls/d' "$pc"
  done
  echo "unpacked $n packages into $prefix"
  ls "$prefix"/usr/lib/x86_64-linux-gnu/pkgconfig
}

setup_env() {
  export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig"
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
  if ! command -v pkg-config >/dev/null && ! command -v pkgconf >/dev/null; then
    mkdir -p "$prefix/bin"
    ln -sf "$prefix/usr/bin/pkgconf" "$prefix/bin/pkg-config"
    export PATH="$prefix/bin:$PATH"
  fi
}

sanitize() { # TOOL: the offload test under compute-sanitizer; any error report fails it
  OMP_NUM_THREADS=4 EXPERTD_GPU_UNVERIFIED=1 EXPERTD_OFFLOAD_TEST_UNDER_SANITIZER=1 compute-sanitizer --tool "$1" --error-exitcode 99 \
    "$build/tests/test-gpu-offload" "$repo/tests/fixtures"
}

configure_and_build() { # only the GPU targets: the daemon's libmicrohttpd is not linked here
  local gpu_targets=(tests/test-golden tests/test-gpu-offload tests/test-gpu-oom
                     tests/test-gpu-probe bench/bench-engine tools/xd-synth-model)
  if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" -Dcuda=enabled -Dwerror=false -Dbuildtype=release || return 1
  fi
  ninja -C "$build" "${gpu_targets[@]}"
}

export repo build prefix
build_all() { unpack && configure_and_build; }
export -f unpack configure_and_build build_all sanitize

say ""
say "## build"
setup_env
step build 300 build_all || {
  say "build failed: nothing else can run"
  exit 1
}

# ---- 3. the gpu suite ----
say ""
say "## gpu suite"
step gpu-suite 300 meson test -C "$build" --no-rebuild --suite gpu --num-processes 4 --print-errorlogs
python3 - "$build/meson-logs/testlog.json" >>"$summary" <<'PY'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError as e:
    print(f"  (no test log: {e})")
    sys.exit(0)
bad = 0
for line in lines:
    t = json.loads(line)
    first = [l for l in (t.get("stdout") or "").splitlines() if l.strip()]
    detail = ""
    if t["result"] == "SKIP":  # on the GPU machine a skip means the GPU was not usable
        detail = " -- " + (first[0] if first else "no reason given")[:200]
    elif t["result"] not in ("OK", "EXPECTEDFAIL"):
        detail = " -- " + " | ".join(first[-6:])[:600]
    bad += t["result"] not in ("OK", "EXPECTEDFAIL")
    print(f"  - {t['name']}: {t['result']} ({t['duration']:.1f} s){detail}")
print(f"  {len(lines) - bad} of {len(lines)} passed")
sys.exit(1 if bad else 0)
PY
[ $? = 0 ] || failed=1
cp "$build/meson-logs/testlog.txt" "$out/gpu-suite-testlog.txt" 2>/dev/null

# ---- 4. sanitizers over the offload test ----
say ""
say "## compute-sanitizer (tests/test-gpu-offload)"
if ! command -v compute-sanitizer >/dev/null; then
  for d in /usr/local/cuda/compute-sanitizer /opt/nvidia/compute-sanitizer; do
    [ -x "$d/compute-sanitizer" ] && export PATH="$d:$PATH" && break
  done
fi
if command -v compute-sanitizer >/dev/null; then
  step sanitizer-memcheck 150 sanitize memcheck
  step sanitizer-racecheck 150 sanitize racecheck
  grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$out"/sanitizer-*.log 2>/dev/null | sed 's/^/  /' >>"$summary"
else
  say "- compute-sanitizer: not found"
  failed=1
fi

# ---- 5. benchmarks, with what time is left ----
say ""
say "## benchmarks"
if [ "$(left)" -gt 150 ]; then
  BENCH_REPEATS=1 BENCH_MODEL_DIR=/tmp/olmoe-1b-7b \
    step bench-gpu "$(($(left) - 10))" bench/run-gpu-bench.sh "$build"
else
  say "- bench-gpu: not run ($(left) s left)"
fi

# At most 8 files of 16 MiB come back: keep each log's end.
for f in "$out"/*.log "$out"/*.txt; do
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt 4194304 ] && { tail -c 4194304 "$f" >"$f.tmp"; mv "$f.tmp" "$f"; }
done
say ""
say "total $((SECONDS - t0)) s of $budget; $([ $failed = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
exit $failed
