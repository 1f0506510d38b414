#!/usr/bin/env python3
"""Chat goldens for the bundled demo model: transformers' apply_chat_template (text and ids) of
models/demo-moe's own chat template over a few conversations, for tests/test_http.py
(/tokenize and chat completions on the demo model). Needs transformers and tokenizers only.

Usage: python3 tools/demo_model/make_chat_golden.py [--model models/demo-moe]
                                                    [--out tests/fixtures/demo-moe/chat.json]
"""
import argparse
import json
import os

import tokenizers
import transformers

CONVERSATIONS = [
    [{"role": "user", "content": "Who created the heaven and the earth?"}],
    [{"role": "system", "content": "Answer with a verse."},
     {"role": "user", "content": "What is man, that thou art mindful of him?"}],
    [{"role": "user", "content": "Who is my shepherd?"},
     {"role": "assistant", "content": "The LORD is my shepherd; I shall not want."},
     {"role": "user", "content": "¿Y quién dijo: Sea la luz?"}],
]


def main():
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=os.path.join(root, "models", "demo-moe"))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "demo-moe",
                                                  "chat.json"))
    args = ap.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    cases = []
    for msgs in CONVERSATIONS:
        for gen in (True, False):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                          return_dict=False)
            cases.append({"messages": msgs, "add_generation_prompt": gen, "text": text,
                          "ids": list(ids)})
    out = {"model": "models/demo-moe", "versions": {"transformers": transformers.__version__,
                                                    "tokenizers": tokenizers.__version__},
           "cases": cases}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{args.out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
