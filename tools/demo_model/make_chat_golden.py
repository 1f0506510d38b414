#!/usr/bin/env python3
"""Chat goldens for the bundled demo model: transformers' apply_chat_template (text and ids) of
models/demo-moe's own chat template over a few conversations and, after the generation prompt,
the model's greedy answer (up to 12 tokens, stopping at <|endoftext|>) computed by transformers
in float32 (the bf16 weights widened exactly, as expertd's CPU backend computes), for
tests/test_http.py (/tokenize and chat completions on the demo model).

Usage: python3 tools/demo_model/make_chat_golden.py [--model models/demo-moe]
                                                    [--out tests/fixtures/demo-moe/chat.json]
"""
import argparse
import json
import os

import torch
import tokenizers
import transformers

N_ANSWER = 12

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
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    cases = []
    for msgs in CONVERSATIONS:
        for gen in (True, False):
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen,
                                          return_dict=False)
            case = {"messages": msgs, "add_generation_prompt": gen, "text": text,
                    "ids": list(ids)}
            if gen:
                with torch.no_grad():
                    out = model.generate(torch.tensor([list(ids)]), max_new_tokens=N_ANSWER,
                                         do_sample=False)
                new = [t for t in out[0, len(ids):].tolist()]
                stop = "stop" if tok.eos_token_id in new else "length"
                new = new[:new.index(tok.eos_token_id)] if stop == "stop" else new
                case.update({"answer_ids": new, "answer": tok.decode(new),
                             "finish_reason": stop})
            cases.append(case)
    out = {"model": "models/demo-moe", "versions": {"transformers": transformers.__version__,
                                                    "tokenizers": tokenizers.__version__,
                                                    "torch": torch.__version__},
           "cases": cases}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{args.out}: {len(cases)} cases")


if __name__ == "__main__":
    main()
