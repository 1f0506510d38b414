#!/usr/bin/env python3
"""Golden references for the bundled demo model: for a few prompts, the ids transformers'
tokenizer gives, the logits at the last prompt position and 16 greedy tokens, computed by
transformers from models/demo-moe loaded in float32 (the bf16 weights widened exactly, f32
arithmetic: what expertd's CPU backend computes). tests/test-demo-model.c checks against it.

Usage: python3 tools/demo_model/make_golden.py [--model models/demo-moe]
                                               [--out tests/fixtures/demo-moe/golden.json]
"""
import argparse
import json
import os
import platform

import numpy as np
import torch
import tokenizers
import transformers

PROMPTS = ["In the beginning God created", "The LORD is my shepherd;",
           "Y dijo Dios: Sea la luz", "And Jesus said unto them,"]
N_GREEDY = 16


def f32(x):
    """Shortest decimal that round-trips to the same float32."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def main():
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=os.path.join(root, "models", "demo-moe"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "demo-moe",
                                                  "golden.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager",
        experts_implementation="eager")
    model.eval()
    cases = []
    for text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=False)
        raw = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        assert raw.encode(text, add_special_tokens=False).ids == ids
        seq = list(ids)
        gaps = []
        last = None
        with torch.no_grad():
            for step in range(N_GREEDY):
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
                if last is None:
                    last = logits
                top = torch.topk(logits, 2).values
                gaps.append((top[0] - top[1]).item())
                seq.append(int(torch.argmax(logits)))
        greedy = seq[len(ids):]
        cases.append({"text": text, "prompt_ids": ids, "greedy_ids": greedy,
                      "greedy_text": tok.decode(greedy), "min_top2_gap": round(min(gaps), 5),
                      "last_logits": [f32(v) for v in last.tolist()]})
        print(f"{text!r} -> {tok.decode(greedy)!r} (min top-2 gap {min(gaps):.4f})")
    golden = {"model": "models/demo-moe", "reference_compute_dtype": "float32",
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__,
                           "tokenizers": tokenizers.__version__},
              "cases": cases}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(golden, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
