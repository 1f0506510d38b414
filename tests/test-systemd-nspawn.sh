#!/usr/bin/env bash
# The unit under a real systemd: a minimal Debian root (debootstrap, cached), expertd installed
# into it by `meson install`, booted with systemd-nspawn on a private network (loopback only);
# a oneshot unit inside (tests/systemd/check-inside.sh) checks READY/STATUS=, /health, a
# completion, the API key handed over with LoadCredential=, the watchdog restarting a stopped
# daemon, `systemctl stop` draining a stream, and the journal; then it powers off.
# Usage: test-systemd-nspawn.sh BUILD_DIR SOURCE_ROOT
# Exit 77 (skipped; the suite's summary counts it as failed) where this machine cannot run
# debootstrap or systemd-nspawn (not root, no package mirror, nspawn refused).
# XD_NSPAWN_CACHE: where the pristine root is kept between runs (default
# /var/cache/expertd-tests); delete it to rebuild.
set -u
build=$(cd "$1" && pwd) src=$(cd "$2" && pwd)
cache=${XD_NSPAWN_CACHE:-/var/cache/expertd-tests}
suite=bookworm
# what the installed binary links, the init, and curl for the checks
packages=systemd,systemd-sysv,dbus,curl,libmicrohttpd12,libjansson4,libpcre2-8-0,libutf8proc2,libzstd1,libgomp1,libsystemd0
skip() { echo "SKIPPED: $*"; exit 77; }

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
for tool in debootstrap systemd-nspawn; do
  command -v $tool >/dev/null || skip "$tool is not installed (tools/bootstrap.sh installs it)"
done

# The pristine root, made once: debootstrap's default mirror, or the one this machine's apt uses.
tarball=$cache/$suite-minbase.tar
if [ ! -s "$tarball" ] || [ "$(cat "$tarball.packages" 2>/dev/null)" != "$packages" ]; then
  mkdir -p "$cache" && rm -rf "$cache/root.new"
  mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  echo "debootstrap $suite into $cache (once; a few minutes)"
  if ! debootstrap --variant=minbase --include=$packages $suite "$cache/root.new" $mirror \
       >"$cache/debootstrap.log" 2>&1; then
    tail -5 "$cache/debootstrap.log"
    skip "debootstrap failed (no package mirror reachable?): see $cache/debootstrap.log"
  fi
  tar -C "$cache/root.new" -cf "$tarball.new" . && mv "$tarball.new" "$tarball" &&
    echo "$packages" >"$tarball.packages"
  rm -rf "$cache/root.new"
fi

tmp=$(mktemp -d /var/tmp/xd-nspawn.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root out=$tmp/out
mkdir -p "$root" "$out"
tar -C "$root" -xf "$tarball"

# expertd as an operator installs it, then the test's model, config, key and drop-in.
meson install -C "$build" --destdir "$root" --no-rebuild --quiet >"$tmp/install.log" 2>&1 ||
  { tail -20 "$tmp/install.log"; echo "FAIL meson_install"; exit 1; }
t=$root/opt/xd-test
mkdir -p "$t/out"
cp -r "$src/models/demo-moe" "$t/demo-moe"
install -m 755 "$src/tests/systemd/check-inside.sh" "$t/check-inside.sh"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$t/api-key"
chmod 600 "$t/api-key"
cat >"$root/etc/expertd/expertd.conf" <<CONF
model = /opt/xd-test/demo-moe
host = 127.0.0.1
port = 8000
api-key-file = /run/credentials/expertd.service/api-key
CONF
mkdir -p "$root/etc/systemd/system/expertd.service.d" "$root/etc/systemd/system/multi-user.target.wants"
cat >"$root/etc/systemd/system/expertd.service.d/test.conf" <<'UNIT'
[Service]
LoadCredential=api-key:/opt/xd-test/api-key
# short, so the test sees a stopped daemon killed and restarted within seconds
WatchdogSec=4
RestartSec=1
UNIT
cat >"$root/etc/systemd/system/xd-check.service" <<'UNIT'
[Unit]
Description=expertd unit checks
Wants=expertd.service
After=expertd.service
[Service]
Type=oneshot
ExecStart=/opt/xd-test/check-inside.sh
TimeoutStartSec=300
UNIT
ln -sf /lib/systemd/system/expertd.service "$root/etc/systemd/system/multi-user.target.wants/"
ln -sf /etc/systemd/system/xd-check.service "$root/etc/systemd/system/multi-user.target.wants/"
echo xd-test >"$root/etc/hostname"

echo "booting the container (bounded: 300 s)"
timeout --signal=KILL 300 systemd-nspawn -q -b -D "$root" --register=no --keep-unit \
  --private-network --bind="$out:/opt/xd-test/out" >"$tmp/boot.log" 2>&1 </dev/null
rc=$?
if [ ! -s "$out/result" ]; then
  tail -30 "$tmp/boot.log"
  if grep -qiE 'not permitted|Failed to (create|mount|allocate)|cgroup' "$tmp/boot.log" && [ $rc != 137 ]; then
    skip "systemd-nspawn cannot boot a container here (rc $rc)"
  fi
  echo "FAIL boot: no result from the container (nspawn rc $rc)"; exit 1
fi
cat "$out/result"
[ -f "$out/journal.txt" ] && cp "$out/journal.txt" "$build/systemd-nspawn-journal.txt"
passed=$(grep -c '^ok ' "$out/result") failed=$(grep -c '^FAIL' "$out/result")
if ! grep -q '^done$' "$out/result"; then
  failed=$((failed + 1)); echo "FAIL checks_finished: the checks did not finish (nspawn rc $rc)"
  tail -30 "$tmp/boot.log"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
