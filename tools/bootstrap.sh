#!/usr/bin/env bash
# Installs what expertd needs to build (Debian packages), configures and builds it in build/,
# and points build/models/default at the bundled demo model. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(gcc libc6-dev pkg-config meson ninja-build python3 python3-venv libjansson-dev libpcre2-dev
          libutf8proc-dev libzstd-dev libmicrohttpd-dev libsystemd-dev libcurl4-openssl-dev
          systemd   # systemd: systemd-analyze, which the unit's test runs (a skip fails the suite)
          debootstrap systemd-container  # the unit booted in a container (tests/test-systemd-nspawn.sh)
          clang libclang-rt-14-dev libomp-14-dev llvm-14)  # the libFuzzer runs of run-tests.sh:
                    # the fuzzer and sanitizer runtimes (only recommended by clang), clang's OpenMP
                    # (omp.h; meson needs it to configure with clang), llvm-symbolizer for stacks
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# nvcc is usually in /usr/local/cuda/bin; the CUDA code is built wherever it is found.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

if [ ! -f build/build.ninja ]; then
  meson setup build "$@"
fi
ninja -C build

# The default model is the trained demo model shipped in models/demo-moe (a link, so a new
# checkout's model is what runs). A tree without it gets random weights with the vocabulary of
# the qwen2 fixture tokenizer (602 ids) and its files, so text prompts and chat (ChatML) work.
mkdir -p build/models
if [ -f models/demo-moe/model.safetensors ]; then
  if [ -e build/models/default ] && [ ! -L build/models/default ]; then
    rm -rf build/models/default  # an earlier synthetic model
  fi
  ln -sfn ../../models/demo-moe build/models/default
  what="the demo model (models/demo-moe)"
else
  if [ -L build/models/default ] || [ ! -f build/models/default/model.safetensors ] ||
     [ ! -f build/models/default/tokenizer.json ]; then
    rm -rf build/models/default
    build/tools/xd-synth-model --out build/models/default --vocab 602 --hidden 128 --layers 4 \
      --heads 4 --kv-heads 2 --experts 16 --top-k 4 --ffn 64 >/dev/null
    cp tests/fixtures/tokenizers/qwen2/tokenizer.json build/models/default/
    cp tests/fixtures/chat/qwen2_moe/tokenizer_config.json build/models/default/
  fi
  what="a synthetic model with random weights"
fi
echo "bootstrap: built build/daemon/expertd; default model in build/models/default: $what"
