#!/usr/bin/env bash
# Runs every libFuzzer target for a bounded time on top of its seed corpus (tests/fuzz/corpus/
# NAME): builds them in build-fuzz/ with clang (-Dfuzz=true), then runs each
# build-fuzz/tests/fuzz/fuzz-NAME-libfuzzer for SECONDS (default 20) with leak detection on.
# Any crash, leak, sanitizer report, timeout or out-of-memory fails the run; the input is kept
# in build-fuzz/fuzz-artifacts/NAME/ and printed (base64) in the log with the corpus folder to
# add it to as a seed. Writes build-fuzz/fuzz-results.json for tools/run-tests.sh's summary.
# Usage: tools/run-fuzzers.sh [SECONDS [NAME...]] (the names: all targets when none is given)
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
only=" $* "
build=build-fuzz

if ! command -v clang >/dev/null; then
  echo "fuzz: clang is missing (tools/bootstrap.sh installs it)"
  exit 1
fi
mkdir -p $build
: >$build/fuzz-results.json
if [ ! -f $build/build.ninja ]; then
  CC=clang meson setup $build -Dfuzz=true -Dcuda=disabled >$build.setup.log 2>&1 ||
    { cat $build.setup.log; exit 1; }
  rm -f $build.setup.log
fi
# meson.build may have gained targets since the build was configured: regenerate first, or
# the list below is the old one and a new target is silently never run
ninja -C $build build.ninja >$build/fuzz-build.log 2>&1 || { tail -40 $build/fuzz-build.log; exit 1; }
# only the libFuzzer binaries: the rest of the clang build is not needed here
targets=$(ninja -C $build -t targets all | sed -n 's|^\(tests/fuzz/fuzz-[a-z0-9-]*-libfuzzer\): .*|\1|p')
if [ -z "$targets" ]; then
  echo "fuzz: $build has no libFuzzer targets (configured without -Dfuzz=true?)"
  exit 1
fi
# shellcheck disable=SC2086
ninja -C $build $targets >$build/fuzz-build.log 2>&1 || { tail -40 $build/fuzz-build.log; exit 1; }

status=0
for t in $targets; do
  name=${t#tests/fuzz/fuzz-}
  name=${name%-libfuzzer}
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || continue
  seeds=tests/fuzz/corpus/$name
  if [ ! -d "$seeds" ]; then
    echo "fuzz: $name: no seed corpus $seeds"
    status=1
    continue
  fi
  # new inputs go to the first directory: a scratch one, so the committed seeds stay as they are
  scratch=$build/fuzz-scratch/$name artifacts=$build/fuzz-artifacts/$name
  rm -rf "$scratch" "$artifacts"
  mkdir -p "$scratch" "$artifacts"
  log=$build/fuzz-$name.log
  ASAN_OPTIONS=detect_leaks=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$build/$t" "$scratch" "$seeds" -max_total_time="$seconds" -rss_limit_mb=2048 \
      -timeout=10 -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$artifacts/" \
      >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  result=OK
  if [ $rc != 0 ]; then
    result=FAIL
    status=1
    echo "fuzz: $name FAILED (exit $rc) after ${runs:-?} runs; the end of $log:"
    grep -v '^#[0-9]' "$log" | tail -40
    for f in "$artifacts"/*; do
      [ -f "$f" ] || continue
      echo "fuzz: $name: the input is $f ($(stat -c %s "$f") bytes); keep it as a seed in" \
           "$seeds/ once fixed. Its bytes, base64:"
      head -c 65536 "$f" | base64
    done
  else
    echo "fuzz: $name: ${runs:-?} runs in $seconds s, no crash, no leak"
  fi
  printf '{"name": "fuzz / %s", "suite": ["libfuzzer"], "result": "%s", "stdout": "%s runs in %s s"}\n' \
    "$name" "$result" "${runs:-?}" "$seconds" >>$build/fuzz-results.json
done
exit $status
