#!/usr/bin/env python3
"""lm-eval-harness's `local-completions` model against a live `expertd serve` on a tiny
loglikelihood task over a local JSON file (tools/lm_eval/tiny_loglikelihood.jsonl: no dataset
is downloaded), then every request's log-likelihood compared with transformers' on the same
ids (the demo model by default). lm-eval sends echo + logprobs with max_tokens 1, token ids,
and reads token_logprobs[ctxlen:-1]: expertd's prompt logprobs.

Needs torch, transformers and lm-eval: the golden venv plus lm-eval, e.g.
  /work/golden-venv/bin/python -m pip install --prefix /tmp/lmeval "lm-eval[api]==0.4.13"
  PYTHONPATH=/tmp/lmeval/lib/python3.11/site-packages \\
    /work/golden-venv/bin/python tools/lm_eval/check.py build/daemon/expertd [MODEL_DIR]
Prints each request's two log-likelihoods and the largest difference; exits 1 over 1e-4."""
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
TOL = 1e-4


def serve(expertd, model):
    p = subprocess.Popen([expertd, "serve", "--model", model, "--port", "0", "--threads", "2"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    port = []
    got = threading.Event()

    def drain():
        for line in p.stderr:
            m = re.search(r"listening on http://[^ ]+:(\d+)", line)
            if m:
                port.append(int(m.group(1)))
                got.set()
        got.set()
    threading.Thread(target=drain, daemon=True).start()
    got.wait(60)
    url = f"http://127.0.0.1:{port[0]}"
    for _ in range(600):
        try:
            if urllib.request.urlopen(url + "/health").status == 200:
                break
        except Exception:
            time.sleep(0.1)
    return p, url


def main():
    expertd = sys.argv[1]
    model = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "models", "demo-moe"))
    name = os.path.basename(model.rstrip("/"))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    import torch
    import transformers
    from lm_eval.tasks import TaskManager

    proc, url = serve(expertd, model)
    try:
        with tempfile.TemporaryDirectory() as tasks:
            with open(os.path.join(tasks, "expertd_tiny.yaml"), "w") as f:
                f.write(f"""task: expertd_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.join(HERE, "tiny_loglikelihood.jsonl")}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
""")
            res = lm_eval.simple_evaluate(
                model="local-completions",
                model_args=f"model={name},base_url={url}/v1/completions,tokenizer_backend=huggingface,"
                           f"tokenizer={model},tokenized_requests=True,num_concurrent=1,max_retries=1",
                tasks=["expertd_tiny"], task_manager=TaskManager(include_path=tasks),
                log_samples=True, batch_size=1)
    finally:
        proc.terminate()
        proc.wait(30)

    tok = transformers.AutoTokenizer.from_pretrained(model)
    lm = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    worst, n = 0.0, 0
    for s in res["samples"]["expertd_tiny"]:
        for (ctx, cont), resp in zip(s["arguments"], s["resps"]):
            got = resp[0][0]
            # lm-eval's encoding: context and continuation apart, no special tokens
            c_ids = tok(ctx, add_special_tokens=False).input_ids
            k_ids = tok(cont, add_special_tokens=False).input_ids
            ids = torch.tensor([c_ids + k_ids])
            with torch.no_grad():
                lp = torch.log_softmax(lm(ids).logits[0].double(), -1)
            want = sum(lp[len(c_ids) + i - 1, t].item() for i, t in enumerate(k_ids))
            print(f"{ctx!r} + {cont!r}: expertd {got:.6f} transformers {want:.6f}")
            worst = max(worst, abs(got - want))
            n += 1
    acc = res["results"]["expertd_tiny"]["acc,none"]
    print(f"lm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else ''} "
          f"local-completions: {n} requests, acc {acc:.3f}; max |expertd - transformers| "
          f"{worst:.2e} (tolerance {TOL:g}); transformers {transformers.__version__}")
    return 0 if n > 0 and worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
