#!/bin/sh
# Rebuilds the demo model end to end: corpus, tokenizer and training (models/demo-moe), the chat
# fine-tune, its goldens (tests/fixtures/demo-moe) and its routing trace and report (bench/).
#
#   tools/demo_model/make.sh [train.py args...]     (after tools/bootstrap.sh built expertd)
#
# DEMO_VENV  venv to create/reuse (default: <repo>/.venv)
# DEMO_WORK  scratch for the Debian packages and the corpus (default: /tmp/demo-model)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${DEMO_VENV:-"$root/.venv"}
work=${DEMO_WORK:-/tmp/demo-model}

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$here/requirements.txt"

cd "$root"
export CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 "$here/corpus.py" --work "$work/debs" --out "$work/data"
nice -n 10 "$venv/bin/python" "$here/train.py" --data "$work/data" --out models/demo-moe \
    --log-dir "$here/run" --steps 1600 --max-minutes 25 --threads 1 "$@"
"$venv/bin/python" "$here/chat_data.py" --data "$work/data"
nice -n 10 "$venv/bin/python" "$here/finetune.py" --data "$work/data" --log-dir "$here/run" \
    --max-minutes 12 --threads 1
"$venv/bin/python" "$here/make_golden.py"
"$venv/bin/python" "$here/make_chat_golden.py"
"$venv/bin/python" "$here/make_perplexity.py"
"$venv/bin/python" "$here/routing.py" record --heldout "$work/data/heldout.txt" \
    --out bench/traces/demo-heldout.xdroute.zst
"$venv/bin/python" "$here/routing.py" report --trace bench/traces/demo-heldout.xdroute.zst \
    --heldout "$work/data/heldout.txt" \
    --out bench/routing-demo.md
