#!/bin/sh
# Regenerate tests/fixtures/golden with the pinned reference stack.
#
#   tools/golden/make.sh [make_fixtures.py args...]
#
# GOLDEN_VENV  venv to create/reuse (default: <repo>/build/golden-venv)
# PYTHON       interpreter used to create it (default: python3, needs >= 3.10)
# Extra pip options (e.g. a CPU-only torch index) can be passed the usual
# way through PIP_INDEX_URL / PIP_EXTRA_INDEX_URL.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${GOLDEN_VENV:-"$root/build/golden-venv"}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    echo "creating venv $venv" >&2
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"

# CPU only, fixed thread count: references must not depend on the machine's GPU.
CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    "$venv/bin/python" "$here/make_fixtures.py" "$@"
"$venv/bin/python" "$here/make_tokenizer_fixtures.py"
"$venv/bin/python" "$here/make_chat_fixtures.py"
exec "$venv/bin/python" "$here/make_chat_template_fixtures.py"
