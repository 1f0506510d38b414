#!/usr/bin/env python3
"""The perplexity reference for `expertd perplexity`: the demo model's held-out text (the first
16000 bytes of corpus.py's heldout.txt, committed as tests/fixtures/demo-moe/heldout-16k.txt),
encoded by transformers' tokenizer, cut into windows of --ctx tokens and scored on each window's
second half as llama-perplexity does (a window runs alone from position 0; the BOS replaces its
first token where the tokenizer adds one; -log p of tokens first+1 .. ctx-1 given the logits at
first .. ctx-2, first = ctx / 2), by transformers from models/demo-moe in float32 (the bf16
weights widened exactly: what expertd's CPU backend computes) and natively in bfloat16.
tests/test-perplexity.sh checks expertd against it.

Usage: python3 tools/demo_model/make_perplexity.py [--ctx 128]
           [--out tests/fixtures/demo-moe/perplexity.json]
"""
import argparse
import json
import math
import os
import platform

import torch
import tokenizers
import transformers


def window_nlls(model, ids, ctx, bos):
    """Mean -log p over the scored half of every whole window, in float64 from the logits."""
    first, out = ctx // 2, []
    for w in range(len(ids) // ctx):
        win = list(ids[w * ctx:(w + 1) * ctx])
        if bos is not None:
            win[0] = bos
        with torch.no_grad():
            logits = model(torch.tensor([win])).logits[0].to(torch.float64)
        logp = torch.log_softmax(logits, dim=-1)
        nll = [-logp[j, win[j + 1]].item() for j in range(first, ctx - 1)]
        out.append(sum(nll) / len(nll))
    return out


def main():
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=os.path.join(root, "models", "demo-moe"))
    ap.add_argument("--text", default=os.path.join(root, "tests", "fixtures", "demo-moe",
                                                   "heldout-16k.txt"))
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "demo-moe",
                                                  "perplexity.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    text = open(args.text, encoding="utf-8").read()
    ids = tok(text)["input_ids"]
    probe = tok("")["input_ids"]
    bos = probe[0] if len(probe) == 1 else None
    result = {"text": os.path.basename(args.text), "ctx": args.ctx, "n_tokens": len(ids),
              "ids": ids, "bos": bos,
              "source": "first 16000 bytes of tools/demo_model/corpus.py's heldout.txt (the "
                        "held-out books of Debian's sword-text-kjv, sword-text-web and "
                        "sword-text-sparv; public domain)",
              "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                           "tokenizers": tokenizers.__version__,
                           "python": platform.python_version()}}
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, dtype=dtype, attn_implementation="eager").eval()
        nll = window_nlls(model, ids, args.ctx, bos)
        result[name] = {"window_mean_nll": nll, "ppl": math.exp(sum(nll) / len(nll))}
        print(f"{name}: {len(nll)} windows of {args.ctx}, PPL {result[name]['ppl']:.4f}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=None)
        f.write("\n")


if __name__ == "__main__":
    main()
