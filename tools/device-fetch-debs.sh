#!/usr/bin/env bash
# Downloads, on this (Debian) machine, the .deb files that tools/device-check.sh unpacks on the
# GPU machine, which has a compiler, CUDA, meson and ninja but no package access: the libraries
# the GPU tests link (jansson, PCRE2, utf8proc, zstd), the headers and pkg-config files the build
# needs (libmicrohttpd's too: meson requires it to configure, though the GPU tests never link
# it), and pkgconf. They land in .deb/ (ignored by git; they are Debian's, never committed);
# pass `carry: [".deb"]` to the device call. About 2.3 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(libjansson4 libjansson-dev libpcre2-8-0 libpcre2-dev libutf8proc2 libutf8proc-dev
          libzstd1 libzstd-dev libmicrohttpd12 libmicrohttpd-dev pkgconf-bin libpkgconf3)
mkdir -p .deb
cd .deb
rm -f ./*.deb
# apt-get download writes as _apt where it can; a root-owned folder makes it warn, not fail
apt-get download "${packages[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
n=$(ls ./*.deb 2>/dev/null | wc -l)
if [ "$n" != "${#packages[@]}" ]; then
  echo "device-fetch-debs: got $n of ${#packages[@]} packages" >&2
  exit 1
fi
echo "device-fetch-debs: $n packages, $(du -sh . | cut -f1), in .deb/"
