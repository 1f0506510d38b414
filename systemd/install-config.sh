#!/bin/sh
# meson install step: puts the example config at CONFIGDIR/expertd.conf only where there is no
# config yet, so a reinstall never overwrites an administrator's settings (the example is also
# installed in the documentation directory). Usage: install-config.sh CONFIGDIR EXAMPLE
set -eu
dir="${DESTDIR:-}$1"
mkdir -p "$dir"
if [ -e "$dir/expertd.conf" ]; then
  echo "expertd: keeping the existing $dir/expertd.conf (the example is in the docs)"
else
  cp "$2" "$dir/expertd.conf"
  chmod 0644 "$dir/expertd.conf"
fi
